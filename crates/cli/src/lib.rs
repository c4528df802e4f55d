//! The `millrace` CLI's client subcommands, on top of `millrace-client` (which carries no CLI
//! dependency). The binary parses flags; this crate does the work and writes its output to the
//! given writer (one JSON object per line where the contract says so).

use std::io::{BufRead, Write};
use std::time::Duration;

use base64::Engine;
use clap::Subcommand;
use serde_json::json;

use millrace_client::{Client, ClientError, PutRecord, StartPosition};

pub mod bench;
mod group;
mod tail;

/// Environment variable naming the default endpoint(s).
pub const ENDPOINT_ENV: &str = "MILLRACE_ENDPOINT";
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7101";
/// Records per PutRecords call when writing stdin (the Kinesis limit).
const PUT_BATCH_RECORDS_MAX: usize = millrace_client::limits::PUT_RECORDS_RECORDS_MAX;

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream and wait until it is ACTIVE.
    Create {
        name: String,
        #[arg(long)]
        shards: u32,
    },
    /// List stream names, one per line.
    List,
    /// Describe a stream as JSON.
    Describe { name: String },
    /// Delete a stream and its data on every node.
    Delete { name: String },
    /// Split a shard at a hash key (default: the middle of its range).
    Split {
        name: String,
        #[arg(long)]
        shard: String,
        #[arg(long)]
        new_starting_hash_key: Option<String>,
    },
    /// Merge two adjacent shards.
    Merge {
        name: String,
        #[arg(long)]
        shard: String,
        #[arg(long)]
        adjacent: String,
    },
    /// Scale to N evenly sized shards (at most double, at least half).
    Scale {
        name: String,
        #[arg(long)]
        shards: u32,
    },
    /// Set the retention period (24-8760 hours).
    Retention {
        name: String,
        #[arg(long)]
        hours: u32,
    },
    /// Add (`--add KEY=VALUE`) or remove (`--remove KEY`) tags; prints the tags as JSON.
    Tag {
        name: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Write records as fast as the cluster acknowledges them (through every member of the
    /// cluster, found from `--endpoint`: each write goes to its shard leader's node).
    Produce {
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        /// Concurrent PutRecords calls.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Records per PutRecords call.
        #[arg(long, default_value_t = 1)]
        batch_records: usize,
        /// Shards of the stream if the bench creates it.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// Write through the batching, idempotent `Producer` (records grouped per shard, up to
        /// --batch-records each, waiting at most --linger-ms; --in-flight calls in all) instead
        /// of one PutRecords call per --batch-records records; latency is then per record.
        #[arg(long)]
        producer: bool,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Read a whole stream from TRIM_HORIZON.
    Consume {
        #[arg(long)]
        stream: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Join the group as a worker and print its records as JSON lines (the fields of `read`),
    /// checkpointing as it goes; on SIGTERM/Ctrl-C release the leases and exit 0.
    Consume {
        stream: String,
        #[arg(long)]
        group: String,
        /// This worker's id (default: process id and a random suffix).
        #[arg(long)]
        worker_id: Option<String>,
        /// Lease lifetime without a heartbeat (1000-300000 ms).
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u32,
    },
    /// The group's leases: owner, epoch, checkpoint and lag per shard (JSON).
    Describe {
        stream: String,
        #[arg(long)]
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Move every replica and leadership off a node; it then leaves and exits. Waits until the
    /// node has left unless --no-wait.
    Decommission {
        node_id: u64,
        #[arg(long)]
        no_wait: bool,
    },
    /// Nodes, under-replicated and under-spread shards, replicas catching up.
    Status {
        /// Print the status as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccessKeyCommand {
    /// Create an access key: prints its id and secret (shown only once) as JSON.
    Create,
    /// List access keys as JSON lines (ids, never secrets).
    List,
    /// Delete an access key and its policy.
    Delete { key: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set an access key's policy from a JSON document (`--file`, or `-` for stdin).
    Put {
        /// The access key id (named `key`: `access_key_id` is the global credential flag).
        key: String,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Print an access key's policy.
    Get { key: String },
    /// Remove an access key's policy.
    Delete { key: String },
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Access keys (needs the cluster permission).
    #[command(subcommand)]
    AccessKey(AccessKeyCommand),
    /// What an access key may do, on which streams (needs the cluster permission).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Cluster operations.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Consumer groups: leases per shard, checkpoints, workers.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Write records: `--data TEXT` writes one; without it, one record per line of stdin (or of
    /// `--file`), at most `--rate` records per second when given.
    Put {
        stream: String,
        #[arg(long)]
        partition_key: String,
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Records per second at most (default: as fast as the cluster takes them).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Print records as they are written (SubscribeToShard on every shard, following resharding),
    /// as JSON lines like `read`. Without `--follow`, stops once caught up.
    Tail {
        stream: String,
        #[arg(long)]
        follow: bool,
        /// trim-horizon | latest | at:SEQ | after:SEQ | at-timestamp:MS
        #[arg(long, default_value = "latest")]
        from: String,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Read records as JSON lines until caught up (or `--limit` records).
    Read {
        stream: String,
        #[arg(long)]
        shard: Option<String>,
        /// trim-horizon | latest | at:SEQ | after:SEQ
        #[arg(long, default_value = "trim-horizon")]
        from: String,
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// Splits `--endpoint` / `MILLRACE_ENDPOINT` values into a list.
pub fn endpoints(flag: Option<&str>) -> Vec<String> {
    let raw = flag
        .map(str::to_string)
        .or_else(|| std::env::var(ENDPOINT_ENV).ok())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs one client subcommand.
pub async fn run(
    client: &Client,
    command: ClientCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        ClientCommand::Stream(StreamCommand::Create { name, shards }) => {
            client.create_stream(&name, shards).await?;
            let d = client
                .wait_for_active(&name, Duration::from_secs(60))
                .await?;
            writeln!(
                out,
                "{}",
                json!({"stream_name": d.stream_name, "status": "ACTIVE", "shards": d.shards.len()})
            )?;
        }
        ClientCommand::AccessKey(AccessKeyCommand::Create) => {
            let k = client.create_access_key().await?;
            writeln!(
                out,
                "{}",
                json!({"access_key_id": k.access_key_id, "secret_access_key": k.secret_access_key, "created_ms": k.created_ms})
            )?;
        }
        ClientCommand::AccessKey(AccessKeyCommand::List) => {
            for k in client.list_access_keys().await? {
                writeln!(
                    out,
                    "{}",
                    json!({"access_key_id": k.access_key_id, "bootstrap": k.bootstrap, "has_policy": k.has_policy, "created_ms": k.created_ms})
                )?;
            }
        }
        ClientCommand::AccessKey(AccessKeyCommand::Delete { key }) => {
            client.delete_access_key(&key).await?;
        }
        ClientCommand::Policy(PolicyCommand::Put { key, file }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)?
            };
            client.put_policy(&key, &text).await?;
        }
        ClientCommand::Policy(PolicyCommand::Get { key }) => {
            writeln!(out, "{}", client.get_policy(&key).await?)?;
        }
        ClientCommand::Policy(PolicyCommand::Delete { key }) => {
            client.delete_policy(&key).await?;
        }
        ClientCommand::Stream(StreamCommand::List) => {
            for name in client.list_streams().await? {
                writeln!(out, "{name}")?;
            }
        }
        ClientCommand::Stream(StreamCommand::Describe { name }) => {
            let d = client.describe_stream(&name).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&describe_json(&d))?)?;
        }
        ClientCommand::Bench(BenchCommand::Produce {
            stream,
            records,
            record_bytes,
            in_flight,
            batch_records,
            shards,
            producer,
            linger_ms,
            json,
        }) => {
            let opts = crate::bench::ProduceOptions {
                stream,
                records,
                record_bytes,
                in_flight,
                batch_records,
                shards,
            };
            // Every member, so that each write goes straight to its shard's leader, as a
            // producer application's discovered client would, whatever `--endpoint` names.
            let client = &client.discovered().await;
            if producer {
                let linger = Duration::from_millis(linger_ms);
                crate::bench::produce_batched(client, opts, linger, json, out).await?
            } else {
                crate::bench::produce(client, opts, json, out).await?
            }
        }
        ClientCommand::Group(GroupCommand::Consume {
            stream,
            group,
            worker_id,
            lease_ms,
        }) => crate::group::consume(client, &stream, &group, worker_id, lease_ms, out).await?,
        ClientCommand::Group(GroupCommand::Describe { stream, group }) => {
            crate::group::describe(client, &stream, &group, out).await?
        }
        ClientCommand::Bench(BenchCommand::Consume { stream, json }) => {
            crate::bench::consume(&client.discovered().await, &stream, json, out).await?
        }
        ClientCommand::Cluster(ClusterCommand::Decommission { node_id, no_wait }) => {
            client.decommission_node(node_id).await?;
            if !no_wait {
                loop {
                    let status = client.cluster_status().await?;
                    let present = status["nodes"]
                        .as_array()
                        .is_some_and(|n| n.iter().any(|n| n["node_id"] == node_id));
                    if !present {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            writeln!(
                out,
                "{}",
                json!({"node_id": node_id, "decommissioned": !no_wait, "started": true})
            )?;
        }
        ClientCommand::Cluster(ClusterCommand::Status { json }) => {
            let status = client.cluster_status().await?;
            if json {
                writeln!(out, "{status}")?;
            } else {
                write_status(&status, out)?;
            }
        }
        ClientCommand::Stream(StreamCommand::Delete { name }) => {
            client.delete_stream(&name).await?;
            writeln!(
                out,
                "{}",
                json!({"stream_name": name, "status": "DELETING"})
            )?;
        }
        ClientCommand::Stream(StreamCommand::Split {
            name,
            shard,
            new_starting_hash_key,
        }) => {
            let key = match new_starting_hash_key {
                Some(k) => k,
                None => middle_of(client, &name, &shard).await?,
            };
            client.split_shard(&name, &shard, &key).await?;
            let d = client
                .wait_for_active(&name, Duration::from_secs(60))
                .await?;
            writeln!(
                out,
                "{}",
                json!({"stream_name": name, "split": shard, "new_starting_hash_key": key, "shards": d.shards.len()})
            )?;
        }
        ClientCommand::Stream(StreamCommand::Merge {
            name,
            shard,
            adjacent,
        }) => {
            client.merge_shards(&name, &shard, &adjacent).await?;
            let d = client
                .wait_for_active(&name, Duration::from_secs(60))
                .await?;
            writeln!(
                out,
                "{}",
                json!({"stream_name": name, "merged": [shard, adjacent], "shards": d.shards.len()})
            )?;
        }
        ClientCommand::Stream(StreamCommand::Scale { name, shards }) => {
            client.update_shard_count(&name, shards).await?;
            client
                .wait_for_active(&name, Duration::from_secs(60))
                .await?;
            writeln!(
                out,
                "{}",
                json!({"stream_name": name, "target_shard_count": shards})
            )?;
        }
        ClientCommand::Stream(StreamCommand::Retention { name, hours }) => {
            client.set_retention_hours(&name, hours).await?;
            writeln!(
                out,
                "{}",
                json!({"stream_name": name, "retention_period_hours": hours})
            )?;
        }
        ClientCommand::Stream(StreamCommand::Tag { name, add, remove }) => {
            let mut tags = std::collections::BTreeMap::new();
            for kv in add {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("--add {kv:?} is not KEY=VALUE")))?;
                tags.insert(k.to_string(), v.to_string());
            }
            if !tags.is_empty() {
                client.add_tags(&name, tags).await?;
            }
            if !remove.is_empty() {
                client.remove_tags(&name, remove).await?;
            }
            writeln!(out, "{}", json!(client.list_tags(&name).await?))?;
        }
        ClientCommand::Put {
            stream,
            partition_key,
            data,
            file,
            rate,
        } => {
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(CliError::Usage("--rate must be a positive number".into()));
            }
            let source: Option<Box<dyn BufRead>> = match (data.is_some(), file) {
                (true, _) => None,
                (false, Some(path)) => Some(Box::new(std::io::BufReader::new(
                    std::fs::File::open(&path).map_err(|e| {
                        CliError::Usage(format!("cannot read {}: {e}", path.display()))
                    })?,
                ))),
                (false, None) => Some(Box::new(std::io::BufReader::new(std::io::stdin()))),
            };
            put(client, &stream, &partition_key, data, source, rate, out).await?
        }
        ClientCommand::Tail {
            stream,
            follow,
            from,
            limit,
        } => {
            let from: StartPosition = from.parse().map_err(CliError::Usage)?;
            crate::tail::tail(client, &stream, from, follow, limit, out).await?
        }
        ClientCommand::Read {
            stream,
            shard,
            from,
            limit,
        } => {
            let from: StartPosition = from.parse().map_err(CliError::Usage)?;
            read(client, &stream, shard, from, limit, out).await?
        }
    }
    Ok(())
}

async fn put(
    client: &Client,
    stream: &str,
    partition_key: &str,
    data: Option<String>,
    source: Option<Box<dyn BufRead>>,
    rate: Option<f64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut pending = Vec::new();
    let Some(source) = source else {
        pending.push(PutRecord::new(
            partition_key,
            data.unwrap_or_default().into_bytes(),
        ));
        return flush_puts(client, stream, &mut pending, out).await;
    };
    // With a rate, batches are a tenth of a second's worth, sent on schedule.
    let batch_max = rate.map_or(PUT_BATCH_RECORDS_MAX, |r| {
        ((r / 10.0).ceil() as usize).clamp(1, PUT_BATCH_RECORDS_MAX)
    });
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    for line in source.lines() {
        pending.push(PutRecord::new(partition_key, line?.into_bytes()));
        if pending.len() == batch_max {
            sent += pending.len() as u64;
            flush_puts(client, stream, &mut pending, out).await?;
            if let Some(r) = rate {
                tokio::time::sleep_until(started + Duration::from_secs_f64(sent as f64 / r)).await;
            }
        }
    }
    flush_puts(client, stream, &mut pending, out).await
}

async fn flush_puts(
    client: &Client,
    stream: &str,
    pending: &mut Vec<PutRecord>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    let results = client.put_records(stream, std::mem::take(pending)).await?;
    let mut failed = 0;
    for r in results {
        match r {
            Ok(ok) => writeln!(
                out,
                "{}",
                json!({"shard_id": ok.shard_id, "sequence_number": ok.sequence_number})
            )?,
            Err(e) => {
                failed += 1;
                writeln!(
                    out,
                    "{}",
                    json!({"error_code": e.code, "error_message": e.message})
                )?
            }
        }
    }
    if failed > 0 {
        return Err(CliError::Usage(format!("{failed} record(s) failed")));
    }
    Ok(())
}

async fn read(
    client: &Client,
    stream: &str,
    shard: Option<String>,
    from: StartPosition,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let shards = match shard {
        Some(s) => vec![s],
        None => client
            .list_shards(stream)
            .await?
            .into_iter()
            .map(|s| s.shard_id)
            .collect(),
    };
    let mut remaining = limit.unwrap_or(u64::MAX);
    for shard_id in shards {
        let mut iterator = client
            .get_shard_iterator(stream, &shard_id, from.clone())
            .await?;
        while remaining > 0 && !iterator.is_empty() {
            let page = client
                .get_records(&iterator, remaining.min(10_000) as u32)
                .await?;
            for r in &page.records {
                writeln!(out, "{}", record_json(&shard_id, r))?;
            }
            remaining -= (page.records.len() as u64).min(remaining);
            let caught_up = page.records.is_empty() && page.millis_behind_latest == 0;
            iterator = page.next_shard_iterator;
            if caught_up {
                break;
            }
        }
    }
    Ok(())
}

/// The cluster status as a table and lists.
fn write_status(s: &serde_json::Value, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "metadata leader: node {}", s["metadata_leader"])?;
    writeln!(
        out,
        "{:<6} {:<8} {:<22} {:<6} {:>7} {:>12}",
        "node", "zone", "address", "state", "shards", "leaderships"
    )?;
    for n in s["nodes"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<6} {:<8} {:<22} {:<6} {:>7} {:>12}",
            n["node_id"].to_string(),
            n["zone"].as_str().unwrap_or(""),
            n["grpc_addr"].as_str().unwrap_or(""),
            if n["up"].as_bool() == Some(true) {
                "up"
            } else {
                "down"
            },
            n["shards"].to_string(),
            n["leaderships"].to_string()
        )?;
    }
    for (key, title) in [
        ("under_replicated", "under-replicated shards"),
        ("under_spread", "under-spread shards"),
        ("catching_up", "replicas catching up"),
        ("moving", "replicas moving"),
        ("repairing", "replicas repairing after damage"),
    ] {
        let items = s[key].as_array().cloned().unwrap_or_default();
        writeln!(out, "{title}: {}", items.len())?;
        for i in items {
            writeln!(out, "  {i}")?;
        }
    }
    Ok(())
}

/// The hash key halfway through a shard's range.
async fn middle_of(client: &Client, stream: &str, shard: &str) -> Result<String, CliError> {
    let s = client
        .list_shards(stream)
        .await?
        .into_iter()
        .find(|s| s.shard_id == shard)
        .ok_or_else(|| CliError::Usage(format!("shard {shard} not found in {stream}")))?;
    let r = s.hash_key_range.unwrap_or_default();
    let parse = |t: &str| {
        t.parse::<u128>()
            .map_err(|_| CliError::Usage(format!("bad hash key {t}")))
    };
    let (lo, hi) = (parse(&r.starting_hash_key)?, parse(&r.ending_hash_key)?);
    Ok((lo + (hi - lo) / 2 + 1).to_string())
}

/// The JSON line for one record: data as UTF-8 text when valid, otherwise base64.
pub fn record_json(shard_id: &str, r: &millrace_client::Record) -> serde_json::Value {
    match std::str::from_utf8(&r.data) {
        Ok(text) => json!({
            "shard_id": shard_id,
            "sequence_number": r.sequence_number,
            "partition_key": r.partition_key,
            "data": text,
        }),
        Err(_) => json!({
            "shard_id": shard_id,
            "sequence_number": r.sequence_number,
            "partition_key": r.partition_key,
            "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
            "data_encoding": "base64",
        }),
    }
}

fn describe_json(d: &millrace_client::proto::StreamDescription) -> serde_json::Value {
    let status = millrace_client::proto::StreamStatus::try_from(d.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("STREAM_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| "UNKNOWN".into());
    json!({
        "stream_name": d.stream_name,
        "stream_arn": d.stream_arn,
        "status": status,
        "retention_period_hours": d.retention_period_hours,
        "creation_timestamp_ms": d.creation_timestamp_ms,
        "replication_factor": d.replication_factor,
        "shards": d.shards.iter().map(|s| {
            let range = s.hash_key_range.clone().unwrap_or_default();
            let seq = s.sequence_number_range.clone().unwrap_or_default();
            json!({
                "shard_id": s.shard_id,
                "starting_hash_key": range.starting_hash_key,
                "ending_hash_key": range.ending_hash_key,
                "starting_sequence_number": seq.starting_sequence_number,
                "ending_sequence_number": (!seq.ending_sequence_number.is_empty()).then_some(seq.ending_sequence_number),
                "replica_node_ids": s.replica_node_ids,
                "leader_node_id": (s.leader_node_id != 0).then_some(s.leader_node_id),
            })
        }).collect::<Vec<_>>(),
    })
}

/// A CLI failure: printed as one line, with a non-zero exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_json_uses_base64_for_binary() {
        let r = millrace_client::Record {
            sequence_number: "1".into(),
            partition_key: "k".into(),
            data: vec![0xff, 0xfe].into(),
            approximate_arrival_timestamp_ms: 0,
        };
        let v = record_json("shardId-000000000000", &r);
        assert_eq!(v["data_encoding"], "base64");
        assert_eq!(v["data"], "//4=");
        let r = millrace_client::Record {
            data: bytes::Bytes::from_static(b"hi"),
            ..r
        };
        assert_eq!(record_json("s", &r)["data"], "hi");
    }

    #[test]
    fn positions_parse() {
        assert_eq!("latest".parse(), Ok(StartPosition::Latest));
        assert_eq!(
            "after:42".parse(),
            Ok(StartPosition::AfterSequenceNumber("42".into()))
        );
        assert!("sideways".parse::<StartPosition>().is_err());
    }

    #[test]
    fn endpoint_lists_split_on_commas() {
        assert_eq!(
            endpoints(Some("http://a:1, http://b:2,")),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }
}
