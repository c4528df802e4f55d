//! Resharding while writers write: per partition key, every record written before a reshard
//! orders before every record after it; nothing is lost or duplicated; parents close and their
//! children are found through ChildShards.

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, Cluster};
use millrace_client::{Client, PutRecord, StartPosition};

const KEYS: usize = 100;
const WRITERS: usize = 4;

#[derive(Default)]
struct Log {
    /// key → acknowledged values, in acknowledgement order.
    acked: HashMap<String, Vec<u64>>,
    /// Values whose outcome is unknown.
    unknown: HashSet<(String, u64)>,
    calls_ok: usize,
}

/// A writer owns `keys`; it writes one value per key per call, values increasing.
async fn writer(client: Client, keys: Vec<String>, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        next += 1;
        let batch: Vec<PutRecord> = keys
            .iter()
            .map(|k| PutRecord::new(k.clone(), next.to_string().into_bytes()))
            .collect();
        match client.put_records("rs", batch).await {
            Ok(results) => {
                let mut log = log.lock().unwrap();
                log.calls_ok += 1;
                for (k, r) in keys.iter().zip(results) {
                    match r {
                        Ok(_) => log.acked.entry(k.clone()).or_default().push(next),
                        Err(e) if e.code == "UNKNOWN_OUTCOME" => {
                            log.unknown.insert((k.clone(), next));
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) => {
                if e.outcome_unknown() {
                    let mut log = log.lock().unwrap();
                    for k in &keys {
                        log.unknown.insert((k.clone(), next));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A shard not closed by a reshard (its sequence number range has no end).
fn is_open(s: &millrace_client::proto::Shard) -> bool {
    let range = s
        .sequence_number_range
        .as_ref()
        .expect("a sequence number range");
    range.ending_sequence_number.is_empty()
}

async fn wait_calls(log: &Arc<Mutex<Log>>, more: usize) {
    let start = log.lock().unwrap().calls_ok;
    wait_until(Duration::from_secs(60), "writers make progress", || {
        let n = log.lock().unwrap().calls_ok;
        async move { n >= start + more }
    })
    .await;
}

/// Reads one shard to its end (closed) or tip (open): records and the child shard ids.
async fn read_shard(client: &Client, shard: &str) -> (Vec<(u128, String, u64)>, Vec<String>) {
    let mut it = client
        .get_shard_iterator("rs", shard, StartPosition::TrimHorizon)
        .await
        .expect("iterator");
    let mut out = Vec::new();
    loop {
        let page = client.get_records(&it, 1000).await.expect("get records");
        let done = page.records.is_empty() && page.millis_behind_latest == 0;
        for r in &page.records {
            let v: u64 = String::from_utf8(r.data.to_vec()).unwrap().parse().unwrap();
            out.push((
                r.sequence_number.parse().unwrap(),
                r.partition_key.clone(),
                v,
            ));
        }
        if page.next_shard_iterator.is_empty() {
            return (out, page.child_shard_ids);
        }
        it = page.next_shard_iterator;
        if done {
            return (out, Vec::new());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reshard_under_load_keeps_per_key_order() {
    let cluster = Cluster::start("reshard", 3).await;
    let client = cluster.client();
    client.create_stream("rs", 2).await.expect("create");
    client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .expect("active");

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    // Writer w owns keys w, w+4, ….
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let keys = (w..KEYS).step_by(WRITERS).map(|k| format!("key-{k}"));
            let keys = keys.collect();
            tokio::spawn(writer(client.clone(), keys, stop.clone(), log.clone()))
        })
        .collect();
    wait_calls(&log, 20).await;

    // Split shard 0 in the middle of its range.
    let s0 = client.list_shards("rs").await.unwrap()[0].clone();
    let r = s0.hash_key_range.unwrap();
    let mid = r.ending_hash_key.parse::<u128>().unwrap() / 2;
    client
        .split_shard("rs", "shardId-000000000000", &mid.to_string())
        .await
        .expect("split");
    client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .expect("split done");
    wait_calls(&log, 20).await;

    // Merge the two children back.
    client
        .merge_shards("rs", "shardId-000000000002", "shardId-000000000003")
        .await
        .expect("merge");
    client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .expect("merge done");
    wait_calls(&log, 20).await;

    // Scale 2 → 4 open shards.
    client.update_shard_count("rs", 4).await.expect("scale");
    let d = client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .expect("scale done");
    wait_calls(&log, 20).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let open: Vec<_> = d.shards.iter().filter(|s| is_open(s)).collect();
    assert_eq!(open.len(), 4, "4 open shards after scaling");
    let closed: Vec<String> = d
        .shards
        .iter()
        .filter(|s| !is_open(s))
        .map(|s| s.shard_id.clone())
        .collect();
    assert_eq!(
        closed.len(),
        5,
        "shards 0, 1, 2, 3 and 4 are closed: {closed:?}"
    );

    // Read every shard; shard numbers follow lineage (parents are older than children).
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in &d.shards {
        let (records, children) = read_shard(&client, &s.shard_id).await;
        if closed.contains(&s.shard_id) {
            assert!(
                !children.is_empty(),
                "{} is closed, so its end names its children",
                s.shard_id
            );
            for c in &children {
                let child = d
                    .shards
                    .iter()
                    .find(|x| &x.shard_id == c)
                    .expect("child exists");
                let parents = [&child.parent_shard_id, &child.adjacent_parent_shard_id];
                assert!(
                    parents.contains(&&s.shard_id),
                    "{c} lists {} as a parent",
                    s.shard_id
                );
            }
        } else {
            assert!(children.is_empty());
        }
        for w in records.windows(2) {
            assert!(
                w[0].0 < w[1].0,
                "sequence numbers increase within {}",
                s.shard_id
            );
        }
        for (_, k, v) in records {
            by_key.entry(k).or_default().push(v);
        }
    }
    assert_eq!(by_key.len(), KEYS, "every key was read");
    let total = check_per_key(&by_key, &log);
    assert!(
        total > 1000,
        "the writers wrote through the reshards ({total} acknowledged)"
    );
}

/// Per key, the values read increase (order kept, nothing twice), every acknowledged value was
/// read, and every value read was acknowledged or in doubt. Answers the acknowledged values.
fn check_per_key(by_key: &BTreeMap<String, Vec<u64>>, log: &Arc<Mutex<Log>>) -> usize {
    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut total = 0;
    for (k, read) in by_key {
        for w in read.windows(2) {
            assert!(
                w[0] < w[1],
                "{k}: value {} read before {} (order broken or duplicate)",
                w[0],
                w[1]
            );
        }
        let acked = log.acked.get(k).cloned().unwrap_or_default();
        let read_set: HashSet<u64> = read.iter().copied().collect();
        let lost: Vec<&u64> = acked.iter().filter(|v| !read_set.contains(v)).collect();
        assert!(lost.is_empty(), "{k}: acknowledged values lost: {lost:?}");
        let acked_set: HashSet<u64> = acked.iter().copied().collect();
        for v in read {
            assert!(
                acked_set.contains(v) || log.unknown.contains(&(k.clone(), *v)),
                "{k}: value {v} was never acknowledged nor in doubt"
            );
        }
        total += acked.len();
    }
    total
}

/// ON_DEMAND streams scale themselves (issue 17): writes over a shard's capacity into one
/// key range split the shard holding it (after the hot spell the test shortens to 2 s), with
/// every record read back once and in per-key order; the cold shards stay as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_splits_a_hot_key_range() {
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_kinesis::types::{StreamMode, StreamModeDetails};
    let env = [("MILLRACE_TEST_ON_DEMAND_SPLIT_AFTER_MS", "2000")];
    let cluster = Cluster::start_with_env("on-demand", 3, &env).await;
    let client = cluster.client();
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{}", cluster.http_addr(1)))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
        .create_stream()
        .stream_name("rs")
        .stream_mode_details({
            let mode = StreamModeDetails::builder().stream_mode(StreamMode::OnDemand);
            mode.build().unwrap()
        })
        .send()
        .await
        .expect("create an ON_DEMAND stream");
    client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .expect("active");
    let open = |d: &millrace_client::proto::StreamDescription| {
        d.shards.iter().filter(|s| is_open(s)).count()
    };
    let first = client.describe_stream("rs").await.expect("describe");
    assert_eq!(open(&first), 4, "ON_DEMAND streams start with 4 shards");

    // 40 keys, all hashing into the first shard's quarter of the key space.
    let hot: Vec<String> = (0..)
        .map(|i| format!("hot-{i}"))
        .filter(|k| millrace_node::shard::hashing::partition_key_hash(k) < 1u128 << 126)
        .take(40)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let tasks: Vec<_> = hot
        .chunks(10)
        .map(|keys| {
            tokio::spawn(writer(
                client.clone(),
                keys.to_vec(),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();
    wait_until(Duration::from_secs(90), "the hot shard split", || {
        let client = client.clone();
        async move {
            client
                .describe_stream("rs")
                .await
                .is_ok_and(|d| open(&d) > 4)
        }
    })
    .await;
    wait_calls(&log, 20).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let d = client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .expect("active after the split");
    // Only the hot quarter was split: the other three shards are still open.
    let still_open: Vec<&str> = d
        .shards
        .iter()
        .filter(|s| is_open(s))
        .map(|s| s.shard_id.as_str())
        .collect();
    for cold in [
        "shardId-000000000001",
        "shardId-000000000002",
        "shardId-000000000003",
    ] {
        assert!(still_open.contains(&cold), "{cold} is open: {still_open:?}");
    }
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in &d.shards {
        let (records, _) = read_shard(&client, &s.shard_id).await;
        for (_, k, v) in records {
            by_key.entry(k).or_default().push(v);
        }
    }
    assert_eq!(by_key.len(), hot.len(), "every key was read");
    let total = check_per_key(&by_key, &log);
    assert!(total > 2000, "{total} records acknowledged");
}
