//! `GET /metrics` on a real 3-node cluster (issue 16): it parses as Prometheus text, its
//! counters move with the writes and reads made, and `docs/metrics.md` lists every metric.
//! The nodes log as JSON (`--log-format json`), which is checked too.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Cluster;
use millrace_client::{PutRecord, StartPosition};
use prometheus_parse::{Scrape, Value};

fn scrape(cluster: &Cluster, id: u64) -> Scrape {
    let (code, body) = cluster.get(id, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The value of `name` (with `stream` = `stream` when given), 0 when absent.
fn value(s: &Scrape, name: &str, stream: Option<&str>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && stream.is_none_or(|st| x.labels.get("stream") == Some(st)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("no summaries are exported"),
        })
        .sum()
}

fn total(scrapes: &[Scrape], name: &str, stream: Option<&str>) -> f64 {
    scrapes.iter().map(|s| value(s, name, stream)).sum()
}

/// The sum over `scrapes` of `name`'s samples whose labels have the values in `labels`; a
/// value starting with `!` matches any other value.
fn labelled(scrapes: &[Scrape], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matches = |x: &prometheus_parse::Sample| {
        labels.iter().all(|(k, v)| match v.strip_prefix('!') {
            Some(not) => x.labels.get(k) != Some(not),
            None => x.labels.get(k) == Some(*v),
        })
    };
    scrapes
        .iter()
        .flat_map(|s| s.samples.iter())
        .filter(|x| x.metric == name && matches(x))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The names a query uses: sample names, a histogram's parts (`_bucket`, `_count`, `_sum`)
/// under its own name.
fn families(s: &Scrape) -> BTreeSet<String> {
    s.samples
        .iter()
        .map(|x| {
            let name = x.metric.as_str();
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_move_with_writes_and_reads_and_are_all_documented() {
    let env = [
        ("MILLRACE_LOG_FORMAT", "json"),
        ("MILLRACE_LOG", "info,openraft=warn,millrace_node::server::routing=debug,millrace_node::api::internal=debug"),
    ];
    let cluster = Cluster::start_with_env("metrics", 3, &env).await;
    let client = cluster.client();
    client.create_stream("metered", 2).await.expect("create");
    client
        .wait_for_active("metered", Duration::from_secs(60))
        .await
        .expect("active");
    // Enhanced monitoring on for every shard-level metric: each node then counts per shard.
    enhanced_monitoring(&cluster, "metered", &["ALL"]);
    let before: Vec<Scrape> = (1..=3).map(|id| scrape(&cluster, id)).collect();
    assert_eq!(
        total(
            &before,
            "millrace_stream_records_written_total",
            Some("metered")
        ),
        0.0
    );

    // 40 calls of 5 records of 100 bytes each.
    for call in 0..40 {
        let records = (0..5)
            .map(|i| PutRecord::new(format!("key-{call}-{i}"), vec![7u8; 100]))
            .collect();
        for r in client.put_records("metered", records).await.expect("put") {
            r.expect("record written");
        }
    }
    let mut read = 0;
    let mut last_read = std::collections::BTreeMap::new();
    let mut per_shard_read = std::collections::BTreeMap::new();
    for shard in client.list_shards("metered").await.expect("shards") {
        let mut it = client
            .get_shard_iterator("metered", &shard.shard_id, StartPosition::TrimHorizon)
            .await
            .expect("iterator");
        loop {
            let page = client.get_records(&it, 10_000).await.expect("read");
            if page.records.is_empty() {
                break;
            }
            read += page.records.len();
            *per_shard_read.entry(shard.shard_id.clone()).or_insert(0) += page.records.len();
            let last = page.records.last().unwrap().sequence_number.clone();
            last_read.insert(shard.shard_id.clone(), last);
            it = page.next_shard_iterator;
        }
    }
    assert_eq!(read, 200);
    // The same records again, pushed to an enhanced fan-out consumer, shard by shard.
    let consumer = client
        .register_consumer("metered", "pushed")
        .await
        .expect("register consumer");
    for (shard, count) in &per_shard_read {
        let mut events = client
            .subscribe_to_shard(&consumer.consumer_arn, shard, StartPosition::TrimHorizon)
            .await
            .expect("subscribe");
        let mut got = 0;
        while got < *count {
            let event = tokio::time::timeout(Duration::from_secs(20), events.message())
                .await
                .expect("an event in time")
                .expect("event")
                .expect("the subscription goes on");
            got += event.records.len();
        }
        assert_eq!(got, *count);
    }
    // A consumer group: one worker holds both shards' leases and checkpoints one of them at
    // the last record read; the other shard has no checkpoint.
    let leases = client
        .group_heartbeat("metered", "readers", "w1", 60_000)
        .await
        .expect("heartbeat");
    assert_eq!(leases.len(), 2);
    let done = &leases[0];
    client
        .checkpoint_lease(
            "metered",
            "readers",
            "w1",
            done,
            &last_read[&done.shard_id],
            false,
        )
        .await
        .expect("checkpoint");
    let lag_in = |scrapes: &[Scrape], metric: &str, shard: &str| -> Option<f64> {
        scrapes
            .iter()
            .flat_map(|s| s.samples.iter())
            .find(|x| {
                x.metric == metric
                    && x.labels.get("group") == Some("readers")
                    && x.labels.get("shard") == Some(shard)
            })
            .map(|x| match x.value {
                Value::Gauge(v) | Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let lag_of = |scrapes: &[Scrape], shard: &str| {
        lag_in(scrapes, "millrace_consumer_group_lag_entries", shard)
    };
    // The lag in records and time is measured by each shard's leader and reaches the metadata
    // leader with the nodes' reports (once a second): the checkpointed shard is caught up,
    // the other is behind by every record written to it.
    let unread_shard = &leases[1].shard_id;
    let expected_records = [
        (&done.shard_id, 0.0),
        (unread_shard, per_shard_read[unread_shard] as f64),
    ];
    common::wait_until(
        Duration::from_secs(20),
        "the group's lag per shard, in entries, records and time",
        || async {
            let now: Vec<Scrape> = (1..=3).map(|id| scrape(&cluster, id)).collect();
            leases.iter().all(|l| lag_of(&now, &l.shard_id).is_some())
                && expected_records.iter().all(|(shard, records)| {
                    lag_in(&now, "millrace_consumer_group_lag_records", shard) == Some(*records)
                })
        },
    )
    .await;
    let now: Vec<Scrape> = (1..=3).map(|id| scrape(&cluster, id)).collect();
    let seconds = |shard: &str| lag_in(&now, "millrace_consumer_group_lag_seconds", shard);
    assert_eq!(seconds(&done.shard_id), Some(0.0));
    // The unread shard's first record was written before everything above: it has waited.
    let waited = seconds(unread_shard).expect("the unread shard's lag in time");
    assert!(
        waited > 0.0 && waited < 600.0,
        "the oldest unread record waited {waited} s"
    );
    // A record over the stream's size limit is refused, and counted for the stream.
    let oversized = client
        .put_records(
            "metered",
            vec![PutRecord::new("k", vec![0u8; 1024 * 1024 + 1])],
        )
        .await;
    assert!(oversized.is_err());
    // A write to a stream that does not exist is counted by its outcome.
    let missing = client
        .put_records("no-such-stream", vec![PutRecord::new("k", b"x".to_vec())])
        .await;
    assert!(missing.is_err());

    let after: Vec<Scrape> = (1..=3).map(|id| scrape(&cluster, id)).collect();
    let moved = |name: &str, stream: Option<&str>| {
        total(&after, name, stream) - total(&before, name, stream)
    };
    // The group, as the metadata leader exports it.
    let checkpointed = lag_of(&after, &done.shard_id).expect("lag");
    let unread = lag_of(&after, &leases[1].shard_id).expect("lag");
    assert!(
        unread >= 1.0 && checkpointed < unread,
        "checkpointed {checkpointed}, without a checkpoint {unread}"
    );
    assert_eq!(total(&after, "millrace_consumer_group_workers", None), 1.0);
    // A worker that stops heartbeating loses its leases once they expire: the next worker's
    // heartbeat takes them over, and that is counted as an expiry (a move to even the load
    // while the owner lives is not).
    let held = client
        .group_heartbeat("metered", "brief", "w1", 1_000)
        .await
        .expect("heartbeat");
    assert_eq!(held.len(), 2);
    common::wait_until(
        Duration::from_secs(20),
        "w2 holding both leases of the group after w1's expired",
        || async {
            let got = client
                .group_heartbeat("metered", "brief", "w2", 1_000)
                .await
                .expect("heartbeat");
            got.len() == 2
        },
    )
    .await;
    let scrapes: Vec<Scrape> = (1..=3).map(|id| scrape(&cluster, id)).collect();
    let of_brief = |name: &str| labelled(&scrapes, name, &[("group", "brief")]);
    // w1 took both; w2 took one to even the load and the other once it expired (1 expiry),
    // or, on a machine slow enough that w1's leases expired before w2's first heartbeat,
    // both at once (2). Every hand-out is counted: at least those 4.
    let expiries = of_brief("millrace_consumer_group_lease_expiries_total");
    assert!(expiries == 1.0 || expiries == 2.0, "{expiries} expiries");
    assert!(of_brief("millrace_consumer_group_leases_acquired_total") >= 4.0);
    // Every node holds replicas of the two shards, each elected once at least.
    for s in &after {
        assert!(value(s, "millrace_raft_shard_term_max", None) >= 1.0);
    }
    assert_eq!(
        total(
            &after,
            "millrace_consumer_group_leases_acquired_total",
            None
        ),
        2.0
    );
    assert_eq!(
        total(&after, "millrace_consumer_group_lease_expiries_total", None),
        0.0
    );
    // Each call was answered by one node, whichever received it: summed over the nodes, the
    // per-stream counters count each record once.
    assert_eq!(
        moved("millrace_stream_records_written_total", Some("metered")),
        200.0
    );
    assert_eq!(
        moved("millrace_stream_written_bytes_total", Some("metered")),
        20_000.0
    );
    assert_eq!(
        moved("millrace_stream_records_failed_total", Some("metered")),
        0.0
    );
    assert_eq!(
        moved("millrace_stream_records_read_total", Some("metered")),
        200.0
    );
    assert_eq!(
        moved("millrace_stream_read_bytes_total", Some("metered")),
        20_000.0
    );
    // Every PutRecords call was timed; the reads too (the last, empty page of each shard
    // included).
    assert!(moved("millrace_produce_seconds_count", None) >= 40.0);
    assert!(moved("millrace_get_records_seconds_count", None) >= 4.0);
    // The shard leaders timed each entry's commit: at least one entry per shard.
    assert!(moved("millrace_commit_seconds_count", None) >= 2.0);
    // The shard leaders proposed the 200 records, and every node synced what it appended.
    assert_eq!(moved("millrace_records_proposed_total", None), 200.0);
    assert!(moved("millrace_entries_proposed_total", None) >= 1.0);
    let calls = |action: &str, outcome: &str| -> f64 {
        let labels = [("action", action), ("outcome", outcome)];
        labelled(&after, "millrace_calls_total", &labels)
            - labelled(&before, "millrace_calls_total", &labels)
    };
    // Per shard (enhanced monitoring): the same records, split over the two shards.
    let per_shard = |name: &str| -> BTreeSet<String> {
        after
            .iter()
            .flat_map(|s| s.samples.iter())
            .filter(|x| x.metric == name && x.labels.get("stream") == Some("metered"))
            .filter_map(|x| x.labels.get("shard").map(String::from))
            .collect()
    };
    assert_eq!(per_shard("millrace_shard_incoming_records_total").len(), 2);
    for (name, want) in [
        ("millrace_shard_incoming_records_total", 200.0),
        ("millrace_shard_incoming_bytes_total", 20_000.0),
        // Read twice: by GetRecords and pushed to the subscriber.
        ("millrace_shard_outgoing_records_total", 400.0),
        ("millrace_shard_outgoing_bytes_total", 40_000.0),
        ("millrace_shard_write_throttled_total", 0.0),
    ] {
        assert_eq!(moved(name, Some("metered")), want, "{name}");
    }
    assert!(!per_shard("millrace_shard_iterator_age_seconds").is_empty());
    assert_eq!(
        moved("millrace_stream_records_throttled_total", Some("metered")),
        0.0
    );
    // The reads were caught up: at most a moment behind.
    assert!(
        total(
            &after,
            "millrace_stream_iterator_age_seconds",
            Some("metered")
        ) < 60.0
    );
    assert_eq!(calls("PutRecords", "ok"), 40.0);
    // Per stream: the same calls, and the refused one, not the one for a missing stream.
    let stream_calls = |action: &str, outcome: &str| -> f64 {
        let labels = [
            ("stream", "metered"),
            ("action", action),
            ("outcome", outcome),
        ];
        labelled(&after, "millrace_stream_calls_total", &labels)
            - labelled(&before, "millrace_stream_calls_total", &labels)
    };
    assert_eq!(stream_calls("PutRecords", "ok"), 40.0);
    assert_eq!(stream_calls("PutRecords", "!ok"), 1.0);
    assert_eq!(stream_calls("GetRecords", "ok"), calls("GetRecords", "ok"));
    assert_eq!(calls("SubscribeToShard", "ok"), 2.0);
    assert_eq!(
        moved("millrace_stream_subscriptions_total", Some("metered")),
        2.0
    );
    assert_eq!(
        moved("millrace_stream_records_pushed_total", Some("metered")),
        200.0
    );
    assert_eq!(
        moved("millrace_stream_pushed_bytes_total", Some("metered")),
        20_000.0
    );
    assert_eq!(calls("PutRecords", "RESOURCE_NOT_FOUND"), 1.0);
    assert!(calls("GetRecords", "ok") >= 4.0);
    for (id, (b, a)) in before.iter().zip(&after).enumerate() {
        let fsyncs =
            value(a, "millrace_fsyncs_total", None) - value(b, "millrace_fsyncs_total", None);
        let rounds = value(a, "millrace_flush_round_seconds_count", None)
            - value(b, "millrace_flush_round_seconds_count", None);
        assert!(
            fsyncs >= 1.0 && rounds >= 1.0,
            "node {}: fsyncs {fsyncs}, rounds {rounds}",
            id + 1
        );
    }
    // Every node holds a replica of both shards, so a copy of the stream's data on disk; the
    // leaders report how far each follower is behind.
    for (id, s) in after.iter().enumerate() {
        assert!(
            value(s, "millrace_stream_disk_bytes", Some("metered")) >= 20_000.0,
            "node {}",
            id + 1
        );
        assert!(value(s, "millrace_open_files", None) > 0.0);
        assert!(value(s, "millrace_connections_accepted_total", None) > 0.0);
    }
    let lags: Vec<_> = after
        .iter()
        .flat_map(|s| s.samples.iter())
        .filter(|x| x.metric == "millrace_raft_follower_lag_entries")
        .collect();
    assert!(!lags.is_empty(), "the leaders report their followers' lag");
    // Groups: 2 shards and the metadata group, 3 replicas each, one leader each.
    assert_eq!(total(&after, "millrace_raft_groups", None), 9.0);
    assert_eq!(total(&after, "millrace_raft_groups_led", None), 3.0);
    // Each shard group's first election was started by a node (elections timers are off).
    assert!(total(&after, "millrace_raft_elections_total", None) >= 2.0);
    // Every node hears both peers; one node is the metadata leader, and it sees all three up
    // and every shard fully replicated and spread.
    for (id, s) in after.iter().enumerate() {
        let peers: Vec<_> = s
            .samples
            .iter()
            .filter(|x| x.metric == "millrace_peer_up")
            .collect();
        assert_eq!(peers.len(), 2, "node {}: {peers:?}", id + 1);
        assert_eq!(value(s, "millrace_peer_up", None), 2.0, "node {}", id + 1);
    }
    assert_eq!(total(&after, "millrace_metadata_leader", None), 1.0);
    // The metadata group elected a leader: every node knows a term of at least 1.
    for s in &after {
        assert!(value(s, "millrace_metadata_term", None) >= 1.0);
    }
    let nodes_in =
        |state: &str| -> f64 { labelled(&after, "millrace_cluster_nodes", &[("state", state)]) };
    assert_eq!((nodes_in("up"), nodes_in("down")), (3.0, 0.0));
    assert_eq!(
        total(&after, "millrace_cluster_shards_under_replicated", None),
        0.0
    );
    // The node's identity.
    let info = after[1]
        .samples
        .iter()
        .find(|x| x.metric == "millrace_node_info")
        .expect("millrace_node_info");
    assert_eq!(info.labels.get("node_id"), Some("2"));

    // A write sent to a node that does not lead its shard is forwarded: both nodes log it
    // with the same request id.
    client.create_stream("forwarded", 1).await.expect("create");
    client
        .wait_for_active("forwarded", Duration::from_secs(60))
        .await
        .expect("active");
    // Only the metric enabled gets shard series.
    enhanced_monitoring(&cluster, "forwarded", &["IncomingBytes"]);
    // Through each node alone: the two that do not lead the shard forward the write.
    for sender in 1..=3 {
        let one = vec![PutRecord::new("k", b"forward me".to_vec())];
        cluster
            .client_for(sender)
            .put_records("forwarded", one)
            .await
            .expect("put")
            .remove(0)
            .expect("written");
    }
    let last: Vec<Scrape> = (1..=3).map(|id| scrape(&cluster, id)).collect();
    let shard_families: BTreeSet<&str> = last
        .iter()
        .flat_map(|s| s.samples.iter())
        .filter(|x| x.labels.get("stream") == Some("forwarded") && x.labels.get("shard").is_some())
        .map(|x| x.metric.as_str())
        .collect();
    assert_eq!(
        shard_families,
        BTreeSet::from(["millrace_shard_incoming_bytes_total"])
    );
    assert_eq!(
        total(
            &last,
            "millrace_shard_incoming_bytes_total",
            Some("forwarded")
        ),
        30.0
    );
    let request_ids = |id: u64, message: &str| -> BTreeSet<String> {
        std::fs::read_to_string(cluster.log_path(id))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .filter_map(|v| v["fields"]["request_id"].as_str().map(String::from))
            .collect()
    };
    let mut pairs = 0;
    for sender in 1..=3 {
        for id in request_ids(sender, "forwarding a write to the shard leader's node") {
            assert_eq!(id.len(), 16, "{id}");
            let leader = (1..=3)
                .filter(|n| *n != sender)
                .find(|n| request_ids(*n, "a write forwarded from another node").contains(&id));
            assert!(
                leader.is_some(),
                "node {sender} forwarded request {id}; no node logged it"
            );
            pairs += 1;
        }
    }
    assert!(
        pairs >= 2,
        "two of the three writes were forwarded ({pairs} found)"
    );

    // Every log line is one JSON object with a time, a level and the event's fields.
    for id in 1..=3 {
        let log = std::fs::read_to_string(cluster.log_path(id)).expect("node log");
        let mut lines = 0;
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("node {id}: a log line is not JSON ({e}): {line}"));
            assert!(
                v["timestamp"].is_string() && v["level"].is_string(),
                "{line}"
            );
            assert!(v["fields"].is_object(), "{line}");
            lines += 1;
        }
        assert!(lines > 0, "node {id} logged nothing");
        assert!(
            log.contains("millrace node starting"),
            "node {id}'s start is logged"
        );
    }

    // docs/metrics.md names every family exported, and exports every family it names.
    let documented = documented();
    let exported: BTreeSet<String> = after.iter().flat_map(families).collect();
    assert_eq!(
        exported, documented,
        "docs/metrics.md's table and the exported families differ"
    );
}

/// Turns enhanced monitoring on for `metrics` of `stream` (Kinesis API, through node 1), and
/// makes every node catch up with that change (a DescribeStreamSummary on each reads the
/// metadata at its leader's commit), so that the next writes are counted per shard.
fn enhanced_monitoring(cluster: &Cluster, stream: &str, metrics: &[&str]) {
    let json = "application/x-amz-json-1.1";
    let body = serde_json::json!({"StreamName": stream, "ShardLevelMetrics": metrics});
    let (status, reply) = common::raw_post(
        cluster.http_addr(1),
        "EnableEnhancedMonitoring",
        json,
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    for id in 1..=3 {
        let body = serde_json::json!({"StreamName": stream}).to_string();
        let (status, reply) = common::raw_post(
            cluster.http_addr(id),
            "DescribeStreamSummary",
            json,
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    }
}

/// The metric names listed in docs/metrics.md's tables.
fn documented() -> BTreeSet<String> {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .expect("docs/metrics.md");
    docs.lines()
        .filter_map(|l| l.strip_prefix("| `millrace_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("millrace_{name}"))
        .collect()
}

/// Every query string (`expr`) in a Grafana dashboard, wherever its panels nest them.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// deploy/grafana's dashboard parses, and every Millrace metric its queries name is one the
/// nodes export (docs/metrics.md, which the test above checks against a real scrape).
#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/millrace-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    assert_eq!(dashboard["uid"], "millrace-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(
        panels.len() >= 10 && queries.len() >= 20,
        "{} queries",
        queries.len()
    );
    let documented = documented();
    let mut named = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(at) = rest.find("millrace_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_string();
            assert!(
                documented.contains(&family),
                "the dashboard queries {name}, which no node exports: {q}"
            );
            named.insert(family);
        }
    }
    // The dashboard covers throughput, latency and group commit.
    for needed in [
        "millrace_stream_records_written_total",
        "millrace_produce_seconds",
        "millrace_flush_round_seconds",
        "millrace_raft_groups_led",
    ] {
        assert!(
            named.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}
