//! The stream and shard model through the native gRPC API against a real 3-node cluster.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{wait_until, Cluster};
use millrace_client::{Client, ClientError, PutRecord, StartPosition};

fn symbol<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(e) => e.symbol().unwrap_or("<no symbol>").to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

async fn create(client: &Client, name: &str, shards: u32) {
    client.create_stream(name, shards).await.expect("create");
    client
        .wait_for_active(name, Duration::from_secs(60))
        .await
        .expect("active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_lifecycle_tags_retention_and_limits() {
    let env = [
        ("MILLRACE_SHARDS_PER_STREAM_MAX", "4"),
        ("MILLRACE_SHARDS_PER_CLUSTER_MAX", "6"),
    ];
    let cluster = Cluster::start_with_env("lifecycle", 3, &env).await;
    let client = cluster.client();

    // Names and shard counts are validated, naming the field and the limit.
    assert_eq!(
        symbol(client.create_stream("bad name", 1).await),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        symbol(client.create_stream(&"x".repeat(129), 1).await),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        symbol(client.create_stream("s", 0).await),
        "INVALID_ARGUMENT"
    );
    match client.create_stream("s", 5).await {
        Err(ClientError::Server {
            symbol, message, ..
        }) => {
            // As in Kinesis: a count above the limit is LimitExceeded.
            assert_eq!(symbol, "LIMIT_EXCEEDED");
            assert!(
                message.contains("ShardCount") && message.contains('4'),
                "{message}"
            );
        }
        other => panic!("expected LIMIT_EXCEEDED, got {other:?}"),
    }

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    create(&client, "a", 4).await;
    let a_groups: Vec<Vec<u64>> = (1..=3).map(|id| cluster.group_dirs(id)).collect();
    assert!(
        a_groups.iter().all(|g| g.len() == 4),
        "every node holds a replica of each shard: {a_groups:?}"
    );
    assert_eq!(
        symbol(client.create_stream("a", 1).await),
        "RESOURCE_IN_USE"
    );
    assert_eq!(
        symbol(client.create_stream("b", 4).await),
        "LIMIT_EXCEEDED",
        "cluster limit of 6 shards"
    );
    create(&client, "b", 2).await;

    // StreamARN is accepted wherever a name is.
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/a";
    let d = client.describe_stream(arn).await.expect("describe by ARN");
    assert_eq!(d.stream_name, "a");
    assert_eq!(d.stream_arn, arn);
    assert_eq!(d.retention_period_hours, 24);
    assert!(
        d.creation_timestamp_ms >= before - 1000,
        "creation timestamp is recorded"
    );

    // Tags.
    let tags: BTreeMap<String, String> = [
        ("team".into(), "data".into()),
        ("env".into(), "test".into()),
    ]
    .into();
    client.add_tags("a", tags.clone()).await.expect("add tags");
    assert_eq!(client.list_tags("a").await.unwrap(), tags);
    client
        .remove_tags("a", vec!["env".into()])
        .await
        .expect("remove tag");
    assert_eq!(
        client
            .list_tags("a")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["team"]
    );
    let bad: BTreeMap<String, String> = [("aws:x".into(), "v".into())].into();
    assert_eq!(symbol(client.add_tags("a", bad).await), "INVALID_ARGUMENT");
    let many: BTreeMap<String, String> = (0..50).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_eq!(
        symbol(client.add_tags("a", many).await),
        "LIMIT_EXCEEDED",
        "51 tags in all"
    );
    let page: BTreeMap<String, String> =
        (0..49).map(|i| (format!("k{i:02}"), "v".into())).collect();
    client.add_tags("a", page).await.expect("50 tags in all");
    assert_eq!(client.list_tags("a").await.unwrap().len(), 50);

    // Retention.
    client.set_retention_hours("a", 48).await.expect("increase");
    assert_eq!(
        client
            .describe_stream("a")
            .await
            .unwrap()
            .retention_period_hours,
        48
    );
    assert_eq!(
        symbol(client.set_retention_hours("a", 9000).await),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        symbol(client.set_retention_hours("a", 23).await),
        "INVALID_ARGUMENT"
    );
    client.set_retention_hours("a", 24).await.expect("decrease");
    assert_eq!(
        client
            .describe_stream("a")
            .await
            .unwrap()
            .retention_period_hours,
        24
    );

    // Delete: the stream disappears and every node deletes its replicas from disk.
    client
        .put_records("a", vec![PutRecord::new("k", b"old".to_vec())])
        .await
        .expect("put")[0]
        .as_ref()
        .expect("acked");
    client.delete_stream("a").await.expect("delete");
    wait_until(Duration::from_secs(30), "stream a is gone", || {
        let client = client.clone();
        async move { matches!(client.describe_stream("a").await, Err(e) if e.symbol() == Some("RESOURCE_NOT_FOUND")) }
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "a's replicas are deleted on every node",
        || {
            let left: Vec<u64> = (1..=3)
                .flat_map(|id| cluster.group_dirs(id))
                .filter(|g| a_groups[0].contains(g))
                .collect();
            async move { left.is_empty() }
        },
    )
    .await;
    assert_eq!(
        symbol(
            client
                .put_records("a", vec![PutRecord::new("k", b"x".to_vec())])
                .await
        ),
        "RESOURCE_NOT_FOUND"
    );
    assert_eq!(client.list_streams().await.unwrap(), vec!["b".to_string()]);
    assert!(
        (1..=3).all(|id| cluster.group_dirs(id).len() == 2),
        "b's replicas stay"
    );

    // The name can be reused; the new stream starts empty.
    create(&client, "a", 1).await;
    let shard = client.list_shards("a").await.unwrap()[0].shard_id.clone();
    let it = client
        .get_shard_iterator("a", &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    assert!(client
        .get_records(&it, 100)
        .await
        .unwrap()
        .records
        .is_empty());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn put(client: &Client, stream: &str, data: &str) -> String {
    let r = client
        .put_records(
            stream,
            vec![PutRecord::new("same-key", data.as_bytes().to_vec())],
        )
        .await
        .expect("put");
    r[0].as_ref().expect("acked").sequence_number.clone()
}

async fn read_from(client: &Client, stream: &str, shard: &str, from: StartPosition) -> Vec<String> {
    let mut it = client
        .get_shard_iterator(stream, shard, from)
        .await
        .expect("iterator");
    let mut out = Vec::new();
    loop {
        let page = client.get_records(&it, 2).await.expect("get records");
        let done = page.records.is_empty() && page.millis_behind_latest == 0;
        out.extend(
            page.records
                .iter()
                .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
        );
        it = page.next_shard_iterator;
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iterator_types_limits_expiry_and_tampering() {
    let env = [("MILLRACE_TEST_ITERATOR_TTL_MS", "2000")];
    let cluster = Cluster::start_with_env("iterators", 3, &env).await;
    let client = cluster.client();
    create(&client, "it", 1).await;
    let shard = client.list_shards("it").await.unwrap()[0].shard_id.clone();

    let seq_a = put(&client, "it", "a").await;
    // Let the clock move on, so the next batch arrives strictly later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t_b = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let seq_b = put(&client, "it", "b").await;
    let latest = client
        .get_shard_iterator("it", &shard, StartPosition::Latest)
        .await
        .unwrap();
    let seq_c = put(&client, "it", "c").await;
    assert!(seq_a.parse::<u128>().unwrap() < seq_b.parse::<u128>().unwrap());

    assert_eq!(
        read_from(&client, "it", &shard, StartPosition::TrimHorizon).await,
        ["a", "b", "c"]
    );
    assert_eq!(
        read_from(
            &client,
            "it",
            &shard,
            StartPosition::AtSequenceNumber(seq_b.clone())
        )
        .await,
        ["b", "c"]
    );
    assert_eq!(
        read_from(
            &client,
            "it",
            &shard,
            StartPosition::AfterSequenceNumber(seq_b.clone())
        )
        .await,
        ["c"]
    );
    assert_eq!(
        read_from(
            &client,
            "it",
            &shard,
            StartPosition::AfterSequenceNumber(seq_c)
        )
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        read_from(&client, "it", &shard, StartPosition::AtTimestampMs(t_b)).await,
        ["b", "c"]
    );
    assert_eq!(
        read_from(&client, "it", &shard, StartPosition::AtTimestampMs(0)).await,
        ["a", "b", "c"]
    );
    let page = client.get_records(&latest, 100).await.unwrap();
    let got: Vec<&[u8]> = page.records.iter().map(|r| &r.data[..]).collect();
    assert_eq!(
        got,
        [b"c"],
        "LATEST starts after the newest record when it was issued"
    );

    // A time still to come is accepted, as Kinesis does: nothing has arrived at or after it.
    let future = StartPosition::AtTimestampMs(now_ms() + 3_600_000);
    assert!(read_from(&client, "it", &shard, future).await.is_empty());

    // Bad input gets a clear error.
    let bad_seq = StartPosition::AtSequenceNumber("12x".into());
    assert_eq!(
        symbol(client.get_shard_iterator("it", &shard, bad_seq).await),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        symbol(
            client
                .get_shard_iterator("it", "shardId-000000000009", StartPosition::TrimHorizon)
                .await
        ),
        "RESOURCE_NOT_FOUND"
    );
    let it = client
        .get_shard_iterator("it", &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    assert_eq!(
        symbol(client.get_records(&it, 10_001).await),
        "INVALID_ARGUMENT"
    );
    let one = client.get_records(&it, 1).await.unwrap();
    assert_eq!(one.records.len(), 1, "the limit bounds the page");
    assert!(
        one.millis_behind_latest >= 40,
        "'a' arrived at least 40 ms before 'c': MillisBehindLatest {}",
        one.millis_behind_latest
    );
    let rest = client
        .get_records(&one.next_shard_iterator, 100)
        .await
        .unwrap();
    assert_eq!(rest.records.len(), 2);
    assert_eq!(rest.millis_behind_latest, 0, "caught up");

    // Tampering: any changed character is refused.
    let mut forged = it.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(
        symbol(client.get_records(&forged, 10).await),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        symbol(client.get_records("not-an-iterator", 10).await),
        "INVALID_ARGUMENT"
    );

    // Expiry (the test cluster's iterators live 2 s instead of Kinesis's 5 minutes).
    wait_until(Duration::from_secs(10), "the iterator expires", || {
        let (client, it) = (client.clone(), it.clone());
        async move { matches!(client.get_records(&it, 10).await, Err(e) if e.symbol() == Some("EXPIRED_ITERATOR")) }
    })
    .await;
    // Worded as Kinesis words it, with the times in Java's Date format.
    match client.get_records(&it, 10).await {
        Err(ClientError::Server { message, .. }) => {
            assert!(
                message.starts_with("Iterator expired. The iterator was created at time ")
                    && message.contains(" UTC 20")
                    && message.ends_with(
                        "which is further in the future than the tolerated delay of 2000 milliseconds."
                    ),
                "{message}"
            );
        }
        other => panic!("expected an expired iterator, got {other:?}"),
    }
}

type Events = tonic::Streaming<millrace_client::proto::SubscribeToShardEvent>;

/// The next event that carries records or child shards (skipping heartbeats); `None` at the end.
async fn next_data(events: &mut Events) -> Option<millrace_client::proto::SubscribeToShardEvent> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("an event within 20 s")
            .expect("stream ok");
        match e {
            Some(e) if e.records.is_empty() && e.child_shards.is_empty() => continue,
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_and_subscribe_push_records_until_the_shard_closes() {
    let cluster = Cluster::start("subscribe", 3).await;
    let client = cluster.client();
    create(&client, "sub", 1).await;
    let shard = client.list_shards("sub").await.unwrap()[0].shard_id.clone();

    // Registered consumers: register, list, describe, limits.
    let consumer = client
        .register_consumer("sub", "app")
        .await
        .expect("register");
    assert!(
        consumer.consumer_arn.contains("stream/sub/consumer/app:"),
        "{}",
        consumer.consumer_arn
    );
    assert_eq!(
        symbol(client.register_consumer("sub", "app").await),
        "RESOURCE_IN_USE"
    );
    assert_eq!(
        symbol(client.register_consumer("sub", "bad name").await),
        "INVALID_ARGUMENT"
    );
    client
        .register_consumer("sub", "other")
        .await
        .expect("second consumer");
    let names: Vec<String> = client
        .list_consumers("sub")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.consumer_name)
        .collect();
    assert_eq!(names, ["app", "other"]);
    assert_eq!(
        client
            .describe_consumer(&consumer.consumer_arn)
            .await
            .unwrap()
            .consumer_name,
        "app"
    );
    client
        .deregister_consumer("sub", "other")
        .await
        .expect("deregister");
    assert_eq!(client.list_consumers("sub").await.unwrap().len(), 1);

    put(&client, "sub", "before").await;
    let mut events = client
        .subscribe_to_shard(&consumer.consumer_arn, &shard, StartPosition::TrimHorizon)
        .await
        .expect("subscribe");
    let mut seen: Vec<String> = Vec::new();
    let first = next_data(&mut events).await.expect("an event");
    seen.extend(
        first
            .records
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
    );
    assert_eq!(seen, ["before"]);

    // Records written now are pushed without the client polling.
    let written = std::time::Instant::now();
    put(&client, "sub", "pushed").await;
    let e = next_data(&mut events).await.expect("pushed event");
    assert_eq!(e.records[0].data, &b"pushed"[..]);
    eprintln!(
        "subscribe: record pushed {} ms after its write was acknowledged",
        written.elapsed().as_millis()
    );
    let cont = e.continuation_sequence_number.clone();
    assert!(cont.parse::<u128>().unwrap() > e.records[0].sequence_number.parse::<u128>().unwrap());

    // Splitting the shard ends the subscription with the child shards.
    let mid = (u128::MAX / 2).to_string();
    client
        .split_shard("sub", &shard, &mid)
        .await
        .expect("split");
    let last = loop {
        let e = next_data(&mut events).await.expect("the end event");
        if !e.child_shards.is_empty() {
            break e;
        }
    };
    assert_eq!(last.child_shards.len(), 2);
    assert!(last
        .child_shards
        .iter()
        .all(|c| c.parent_shards == [shard.clone()]));
    assert!(
        events.message().await.expect("clean end").is_none(),
        "the stream ends at the shard's end"
    );

    // A subscription resumes from the continuation sequence number, once 5 s have passed since
    // the last one of this consumer and shard (RESOURCE_IN_USE before, as in Kinesis); unknown
    // consumers are refused.
    let mut refusals = 0;
    let mut again = loop {
        let attempt = client
            .subscribe_to_shard(
                &consumer.consumer_arn,
                &shard,
                StartPosition::AtSequenceNumber(cont.clone()),
            )
            .await;
        match attempt {
            Ok(events) => break events,
            Err(e) if e.symbol() == Some("RESOURCE_IN_USE") && refusals < 100 => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("resubscribe: {e}"),
        }
    };
    let e = next_data(&mut again).await.expect("event");
    assert!(
        e.records.is_empty() && !e.child_shards.is_empty(),
        "nothing after 'pushed' but the end"
    );
    client.deregister_consumer("sub", "app").await.unwrap();
    let refused = client
        .subscribe_to_shard(&consumer.consumer_arn, &shard, StartPosition::TrimHorizon)
        .await
        .map(|_| ());
    assert_eq!(symbol(refused), "RESOURCE_NOT_FOUND");
}

fn ids(shards: &[millrace_client::proto::Shard]) -> Vec<String> {
    shards
        .iter()
        .map(|s| s.shard_id[8..].trim_start_matches('0').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_limits_throttling_and_list_shards_filters() {
    use millrace_client::proto::{
        CreateStreamRequest, ListShardsRequest, ShardFilter, ShardFilterType,
    };
    let cluster =
        Cluster::start_with_env("limits", 3, &[("MILLRACE_SHARD_THROTTLING", "true")]).await;
    let client = cluster.client();

    // Record and request limits, naming the field.
    create(&client, "lim", 1).await;
    let too_big = vec![PutRecord::new("k", vec![0u8; 1024 * 1024 + 1])];
    match client.put_records("lim", too_big).await {
        Err(ClientError::Server {
            symbol, message, ..
        }) => {
            assert_eq!(symbol, "INVALID_ARGUMENT");
            assert!(
                message.contains("Records[0].Data") && message.contains("1048576"),
                "{message}"
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let many: Vec<PutRecord> = (0..501)
        .map(|i| PutRecord::new(format!("k{i}"), vec![1]))
        .collect();
    assert_eq!(
        symbol(client.put_records("lim", many).await),
        "INVALID_ARGUMENT"
    );
    let long_key = vec![PutRecord::new("k".repeat(257), vec![1])];
    assert_eq!(
        symbol(client.put_records("lim", long_key).await),
        "INVALID_ARGUMENT"
    );
    let bad_hash = vec![PutRecord {
        explicit_hash_key: Some("340282366920938463463374607431768211456".into()),
        ..PutRecord::new("k", vec![1])
    }];
    assert_eq!(
        symbol(client.put_records("lim", bad_hash).await),
        "INVALID_ARGUMENT"
    );

    // A stream may accept records up to 10 MiB.
    let big = |kib| CreateStreamRequest {
        stream_name: "big".into(),
        shard_count: 1,
        max_record_size_kib: kib,
        ..Default::default()
    };
    assert_eq!(
        symbol(client.create_stream_with(big(20_000)).await),
        "INVALID_ARGUMENT"
    );
    client
        .create_stream_with(big(10_240))
        .await
        .expect("create big");
    let d = client
        .wait_for_active("big", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(d.max_record_size_kib, 10_240);
    let five_mib = vec![PutRecord::new("k", vec![7u8; 5 * 1024 * 1024])];
    client
        .put_records("big", five_mib)
        .await
        .expect("5 MiB record")[0]
        .as_ref()
        .expect("acked");
    let shard = d.shards[0].shard_id.clone();
    let it = client
        .get_shard_iterator("big", &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    assert_eq!(
        client.get_records(&it, 10).await.unwrap().records[0]
            .data
            .len(),
        5 * 1024 * 1024
    );

    // Throttling (on in this cluster): 1,000 records/s in, 5 GetRecords calls/s out per shard.
    create(&client, "thr", 1).await;
    let mut throttled = 0;
    for call in 0..4 {
        let batch = (0..500)
            .map(|i| PutRecord::new(format!("t{call}-{i}"), vec![1]))
            .collect();
        let results = client.put_records("thr", batch).await.expect("put");
        throttled += results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.code == "PROVISIONED_THROUGHPUT_EXCEEDED"))
            .count();
    }
    assert!(
        throttled >= 500,
        "a shard takes at most 1,000 records per second ({throttled} refused)"
    );
    // Each refused record is counted for the stream, on the node that answered the call.
    let counted: f64 = (1..=3)
        .map(|id| {
            let (code, body) = cluster.get(id, "/metrics").expect("GET /metrics");
            assert_eq!(code, 200);
            let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
                .expect("Prometheus text");
            scrape
                .samples
                .iter()
                .filter(|x| {
                    x.metric == "millrace_stream_records_throttled_total"
                        && x.labels.get("stream") == Some("thr")
                })
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum::<f64>()
        })
        .sum();
    assert_eq!(counted, throttled as f64);
    let shard = client.list_shards("thr").await.unwrap()[0].shard_id.clone();
    let it = client
        .get_shard_iterator("thr", &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..8 {
        if let Err(e) = client.get_records(&it, 1).await {
            assert_eq!(e.symbol(), Some("PROVISIONED_THROUGHPUT_EXCEEDED"));
            refused = true;
        }
    }
    assert!(
        refused,
        "the sixth GetRecords call within a second is refused"
    );

    // ListShards filters and pagination across a split.
    create(&client, "flt", 2).await;
    let before_split = super_now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = (u128::MAX / 4).to_string();
    client
        .split_shard("flt", "shardId-000000000000", &mid)
        .await
        .expect("split");
    client
        .wait_for_active("flt", Duration::from_secs(60))
        .await
        .unwrap();
    let filtered = |t: ShardFilterType, shard_id: &str, ts: i64| {
        let filter = ShardFilter {
            r#type: t as i32,
            shard_id: shard_id.into(),
            timestamp_ms: ts,
        };
        let client = client.clone();
        async move {
            ids(&client
                .list_shards_filtered("flt", Some(filter))
                .await
                .unwrap())
        }
    };
    assert_eq!(
        filtered(ShardFilterType::Unspecified, "", 0).await,
        ["", "1", "2", "3"]
    );
    assert_eq!(
        filtered(ShardFilterType::AtLatest, "", 0).await,
        ["1", "2", "3"]
    );
    assert_eq!(
        filtered(ShardFilterType::AfterShardId, "shardId-000000000001", 0).await,
        ["2", "3"]
    );
    assert_eq!(
        filtered(ShardFilterType::FromTrimHorizon, "", 0).await,
        ["", "1", "2", "3"]
    );
    assert_eq!(
        filtered(ShardFilterType::AtTrimHorizon, "", 0).await,
        ["", "1"]
    );
    assert_eq!(
        filtered(ShardFilterType::AtTimestampFilter, "", before_split).await,
        ["", "1"]
    );
    assert_eq!(
        filtered(ShardFilterType::FromTimestamp, "", super_now_ms()).await,
        ["1", "2", "3"]
    );
    let page = client
        .list_shards_page(ListShardsRequest {
            stream_name: "flt".into(),
            max_results: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&page.shards), ["", "1", "2"]);
    let rest = client
        .list_shards_page(ListShardsRequest {
            next_token: page.next_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&rest.shards), ["3"]);
    assert!(rest.next_token.is_empty());
    let mixed = ListShardsRequest {
        stream_name: "flt".into(),
        next_token: page.next_token,
        ..Default::default()
    };
    assert_eq!(
        symbol(client.list_shards_page(mixed).await),
        "INVALID_ARGUMENT"
    );
}

fn super_now_ms() -> i64 {
    now_ms()
}

/// Reads the whole shard page by page (`limit` records each) until `want` records came back.
async fn read_pages(client: &Client, stream: &str, limit: u32, want: usize) -> Vec<String> {
    let shard = client.list_shards(stream).await.expect("shards")[0]
        .shard_id
        .clone();
    let mut it = client
        .get_shard_iterator(stream, &shard, StartPosition::TrimHorizon)
        .await
        .expect("iterator");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out.len() < want {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {want} records in 60 s",
            out.len()
        );
        let page = client.get_records(&it, limit).await.expect("get records");
        assert!(
            page.records.len() <= limit as usize,
            "a page over its limit"
        );
        out.extend(
            page.records
                .iter()
                .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
        );
        it = page.next_shard_iterator;
    }
    out
}

/// Consumers reading a shard page after page get pages the leader read ahead, and still every
/// record exactly once and in order — with two consumers at different page sizes side by side
/// and writes landing while they read (pages cut short at the tip are read again, not served
/// stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_read_ahead_keep_every_record_once_and_in_order() {
    let cluster = Cluster::start("readahead", 3).await;
    let client = cluster.client();
    create(&client, "ahead", 1).await;
    let write = |from: usize, to: usize| {
        let client = client.clone();
        async move {
            for chunk in (from..to).collect::<Vec<_>>().chunks(50) {
                let records = chunk
                    .iter()
                    .map(|n| PutRecord::new("one-key", format!("r{n}").into_bytes()))
                    .collect();
                for r in client.put_records("ahead", records).await.expect("put") {
                    r.expect("acknowledged");
                }
            }
        }
    };
    write(0, 600).await;
    let (_, a, b) = tokio::join!(
        write(600, 1000),
        read_pages(&client, "ahead", 50, 1000),
        read_pages(&client, "ahead", 70, 1000),
    );
    let expected: Vec<String> = (0..1000).map(|n| format!("r{n}")).collect();
    assert_eq!(a, expected, "limit 50: every record once, in order");
    assert_eq!(b, expected, "limit 70: every record once, in order");
    let served: u64 = (1..=3)
        .filter_map(|id| cluster.status(id)?["read_path"]["pages_read_ahead"].as_u64())
        .sum();
    assert!(served > 0, "no page was served from read-ahead");
}
