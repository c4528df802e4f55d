//! `millrace bench produce|consume`: load generators that report records/s, MB/s and latency.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::CliError;
use millrace_client::limits::{GET_RECORDS_RECORDS_MAX, PUT_RECORDS_RECORDS_MAX};
use millrace_client::{Client, ClientError, PutRecord, StartPosition};

/// Options of `bench produce`.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub stream: String,
    pub records: u64,
    pub record_bytes: usize,
    pub in_flight: usize,
    pub batch_records: usize,
    pub shards: u32,
}

/// A live progress bar on stderr (drawn only on a terminal, never with `--json`): a bar
/// towards `total`, or a counter when the total is unknown.
fn progress(json_out: bool, total: Option<u64>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if json_out {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            "{bar:40} {pos}/{len} records  {per_sec}  eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{spinner} {pos} records  {per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Latency percentile in milliseconds from sorted microsecond samples.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    // Nearest-rank percentile in integer arithmetic (p in tenths of a percent).
    let tenths = (p * 10.0).round() as usize;
    let rank = (tenths * sorted_us.len()).div_ceil(1000);
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

async fn ensure_stream(client: &Client, stream: &str, shards: u32) -> Result<(), ClientError> {
    match client.describe_stream(stream).await {
        Ok(_) => {}
        Err(ClientError::Server { symbol, .. }) if symbol == "RESOURCE_NOT_FOUND" => {
            client.create_stream(stream, shards).await?;
        }
        Err(e) => return Err(e),
    }
    client
        .wait_for_active(stream, Duration::from_secs(60))
        .await
        .map(|_| ())
}

/// Writes `records` records of `record_bytes` bytes with `in_flight` concurrent PutRecords
/// calls of `batch_records` records each; latency is per call.
pub async fn produce(
    client: &Client,
    opts: ProduceOptions,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if opts.in_flight == 0
        || opts.batch_records == 0
        || opts.batch_records > PUT_RECORDS_RECORDS_MAX
    {
        return Err(CliError::Usage(format!(
            "--in-flight must be at least 1 and --batch-records 1-{PUT_RECORDS_RECORDS_MAX}"
        )));
    }
    ensure_stream(client, &opts.stream, opts.shards).await?;
    let before = client.node_stats().await;
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let payload = Arc::new(vec![b'x'; opts.record_bytes]);
    let bar = progress(json_out, Some(opts.records));
    let started = Instant::now();
    let workers = (0..opts.in_flight).map(|w| {
        let (client, next, failed, payload, opts, bar) = (
            client.clone(),
            next.clone(),
            failed.clone(),
            payload.clone(),
            opts.clone(),
            bar.clone(),
        );
        tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            loop {
                let first = next.fetch_add(opts.batch_records as u64, Ordering::Relaxed);
                if first >= opts.records {
                    return latencies_us;
                }
                let n = (opts.records - first).min(opts.batch_records as u64);
                let batch: Vec<PutRecord> = (first..first + n)
                    .map(|i| PutRecord::new(format!("bench-{w}-{i}"), payload.to_vec()))
                    .collect();
                let t = Instant::now();
                match client.put_records(&opts.stream, batch).await {
                    Ok(results) => {
                        let bad = results.iter().filter(|r| r.is_err()).count() as u64;
                        failed.fetch_add(bad, Ordering::Relaxed);
                        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                            tracing::warn!(code = %e.code, message = %e.message, "a record failed");
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(error = %e, "a PutRecords call failed");
                    }
                }
                latencies_us.push(t.elapsed().as_micros() as u64);
                bar.inc(n);
            }
        })
    });
    let mut latencies: Vec<u64> = Vec::new();
    for w in futures::future::join_all(workers).await {
        latencies.extend(w.map_err(|e| CliError::Usage(format!("bench worker failed: {e}")))?);
    }
    bar.finish_and_clear();
    let failed = failed.load(Ordering::Relaxed);
    let nodes = node_deltas(&before, &client.node_stats().await);
    report_produce(&opts, started, latencies, failed, &nodes, json_out, out)
}

/// One node's write path over a bench run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeDelta {
    pub node_id: u64,
    pub requests_led: u64,
    pub requests_forwarded: u64,
    pub entries: u64,
    pub records: u64,
    pub flush_rounds: u64,
    pub fsyncs: u64,
    /// Of `fsyncs`, the `syncfs` calls (each covering several segment files).
    pub filesystem_syncs: u64,
    pub flush_micros: u64,
}

impl NodeDelta {
    /// Records this node proposed as a leader per fsync it made (its group commit).
    pub fn records_per_fsync(&self) -> f64 {
        self.records as f64 / self.fsyncs.max(1) as f64
    }

    /// Mean time of one flush round, milliseconds.
    pub fn flush_ms(&self) -> f64 {
        self.flush_micros as f64 / 1000.0 / self.flush_rounds.max(1) as f64
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "node_id": self.node_id,
            "requests_led": self.requests_led,
            "requests_forwarded": self.requests_forwarded,
            "entries": self.entries,
            "records": self.records,
            "flush_rounds": self.flush_rounds,
            "fsyncs": self.fsyncs,
            "filesystem_syncs": self.filesystem_syncs,
            "mean_flush_ms": self.flush_ms(),
            "records_per_fsync": self.records_per_fsync(),
        })
    }
}

/// What each node did between two `node_stats` readings (nodes in both only).
pub fn node_deltas(
    before: &[millrace_client::proto::GetNodeStatsResponse],
    after: &[millrace_client::proto::GetNodeStatsResponse],
) -> Vec<NodeDelta> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.node_id == a.node_id)?;
            Some(NodeDelta {
                node_id: a.node_id,
                requests_led: a.requests_led.saturating_sub(b.requests_led),
                requests_forwarded: a.requests_forwarded.saturating_sub(b.requests_forwarded),
                entries: a.entries_proposed.saturating_sub(b.entries_proposed),
                records: a.records_proposed.saturating_sub(b.records_proposed),
                flush_rounds: a.flush_rounds.saturating_sub(b.flush_rounds),
                fsyncs: a.fsyncs.saturating_sub(b.fsyncs),
                filesystem_syncs: a.filesystem_syncs.saturating_sub(b.filesystem_syncs),
                flush_micros: a.flush_micros.saturating_sub(b.flush_micros),
            })
        })
        .collect()
}

/// Prints `bench produce`'s summary (one JSON object with `--json`).
fn report_produce(
    opts: &ProduceOptions,
    started: Instant,
    mut latencies: Vec<u64>,
    failed: u64,
    nodes: &[NodeDelta],
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ok = opts.records - failed;
    let summary = json!({
        "records": ok,
        "failed_records": failed,
        "seconds": elapsed,
        "records_per_sec": ok as f64 / elapsed,
        "mb_per_sec": (ok as f64 * opts.record_bytes as f64) / elapsed / 1e6,
        "p50_ms": percentile_ms(&latencies, 50.0),
        "p99_ms": percentile_ms(&latencies, 99.0),
        "p999_ms": percentile_ms(&latencies, 99.9),
        "in_flight": opts.in_flight,
        "batch_records": opts.batch_records,
        "record_bytes": opts.record_bytes,
        "nodes": nodes.iter().map(NodeDelta::to_json).collect::<Vec<_>>(),
    });
    if json_out {
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "produced {ok} records ({failed} failed) in {elapsed:.2}s: {:.0} records/s, {:.2} MB/s; latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            summary["records_per_sec"].as_f64().unwrap_or(0.0),
            summary["mb_per_sec"].as_f64().unwrap_or(0.0),
            summary["p50_ms"].as_f64().unwrap_or(0.0),
            summary["p99_ms"].as_f64().unwrap_or(0.0),
            summary["p999_ms"].as_f64().unwrap_or(0.0),
        )?;
        for n in nodes {
            writeln!(
                out,
                "  node {}: led {} requests in {} entries ({} records), forwarded {}; {} flush rounds, {} fsyncs ({} of them syncfs), {:.2} ms per round, {:.1} records per fsync",
                n.node_id,
                n.requests_led,
                n.entries,
                n.records,
                n.requests_forwarded,
                n.flush_rounds,
                n.fsyncs,
                n.filesystem_syncs,
                n.flush_ms(),
                n.records_per_fsync(),
            )?;
        }
    }
    Ok(())
}

/// Writes through the batching, idempotent [`millrace_client::Producer`]; latency is per record, from
/// `send` to its acknowledgement.
pub async fn produce_batched(
    client: &Client,
    opts: ProduceOptions,
    linger: Duration,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    ensure_stream(client, &opts.stream, opts.shards).await?;
    let shards = client.list_shards(&opts.stream).await?.len().max(1);
    let before = client.node_stats().await;
    let config = millrace_client::ProducerConfig {
        linger,
        batch_records_max: opts.batch_records.clamp(1, PUT_RECORDS_RECORDS_MAX),
        in_flight_per_shard: opts.in_flight.div_ceil(shards).max(1),
        idempotent: true,
        ..millrace_client::ProducerConfig::default()
    };
    let producer = millrace_client::Producer::new(client.clone(), &opts.stream, config)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let bar = progress(json_out, Some(opts.records));
    let payload = vec![b'x'; opts.record_bytes];
    let started = Instant::now();
    // Acknowledgements are awaited by a second task, so sending never waits on them.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            while let Some((sent_at, pending)) = rx.recv().await {
                let pending: millrace_client::RecordFuture = pending;
                let sent_at: Instant = sent_at;
                match pending.await {
                    Ok(_) => latencies.push(sent_at.elapsed().as_micros() as u64),
                    Err(_) => failed += 1,
                }
                bar.inc(1);
            }
            (latencies, failed)
        })
    };
    for i in 0..opts.records {
        let record = PutRecord::new(format!("bench-{i}"), payload.clone());
        let sent_at = Instant::now();
        let pending = producer
            .send(record)
            .await
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let _ = tx.send((sent_at, pending));
    }
    drop(tx);
    producer
        .close()
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let (latencies, failed) = collector
        .await
        .map_err(|e| CliError::Usage(format!("bench collector failed: {e}")))?;
    bar.finish_and_clear();
    let nodes = node_deltas(&before, &client.node_stats().await);
    report_produce(&opts, started, latencies, failed, &nodes, json_out, out)
}

/// Reads every shard of a stream from TRIM_HORIZON to the tip and reports the rate.
pub async fn consume(
    client: &Client,
    stream: &str,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let bar = progress(json_out, None);
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    for shard in client.list_shards(stream).await? {
        let mut it = client
            .get_shard_iterator(stream, &shard.shard_id, StartPosition::TrimHorizon)
            .await?;
        while !it.is_empty() {
            let page = client.get_records(&it, GET_RECORDS_RECORDS_MAX).await?;
            let done = page.records.is_empty() && page.millis_behind_latest == 0;
            records += page.records.len() as u64;
            bar.inc(page.records.len() as u64);
            bytes += page
                .records
                .iter()
                .map(|r| r.data.len() as u64)
                .sum::<u64>();
            it = page.next_shard_iterator;
            if done {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let summary = json!({
        "records": records,
        "seconds": elapsed,
        "records_per_sec": records as f64 / elapsed,
        "mb_per_sec": bytes as f64 / elapsed / 1e6,
    });
    if json_out {
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "consumed {records} records in {elapsed:.2}s: {:.0} records/s, {:.2} MB/s",
            records as f64 / elapsed,
            bytes as f64 / elapsed / 1e6
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile_ms;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 500.0);
        assert_eq!(percentile_ms(&v, 99.0), 990.0);
        assert_eq!(percentile_ms(&v, 99.9), 999.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }
}
