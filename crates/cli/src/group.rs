//! `millrace group consume` and `millrace group describe`: a [`GroupWorker`] that prints what
//! it is handed, and a group's leases as JSON.

use std::io::Write;
use std::time::Duration;

use millrace_client::{Client, GroupWorker, Record, StartPosition};
use serde_json::json;

use crate::{record_json, CliError};

/// `millrace group consume`: prints each record as a JSON line (the fields of `read`),
/// checkpointing as it goes, until SIGTERM/Ctrl-C; then releases its leases and returns.
pub async fn consume(
    client: &Client,
    stream: &str,
    group: &str,
    worker_id: Option<String>,
    lease_ms: u32,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let worker_id = worker_id
        .unwrap_or_else(|| format!("{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let mut worker = GroupWorker::new(client.clone(), stream, group, &worker_id, lease_ms);
    let beat_every = Duration::from_millis(u64::from(lease_ms.max(1000)) / 3);
    // A signal only sets a flag: a step (print a page, then checkpoint it) is never cut short,
    // so everything printed is checkpointed before the worker leaves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::tail::interrupted().await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut next_beat = tokio::time::Instant::now();
    let result: Result<(), CliError> = async {
        while !stopped() {
            if tokio::time::Instant::now() >= next_beat {
                worker.heartbeat().await?;
                next_beat = tokio::time::Instant::now() + beat_every;
            }
            let mut print = |shard: &str, r: &Record| -> Result<(), CliError> {
                writeln!(out, "{}", record_json(shard, r))?;
                Ok(())
            };
            let handed = worker.step(&mut print).await?;
            out.flush()?;
            if handed == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
    .await;
    watcher.abort();
    // Everything printed was checkpointed page by page; leave the group.
    let released = worker.release().await;
    result?;
    released.map_err(CliError::from)
}

/// `millrace group describe`: the group's leases (owner, epoch, checkpoint, lag) as JSON.
pub async fn describe(
    client: &Client,
    stream: &str,
    group: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let g = client.describe_consumer_group(stream, group).await?;
    let mut leases = Vec::new();
    for l in &g.leases {
        // Lag: how far the first unprocessed record is behind the shard's tip.
        let (lag_ms, pending) = if l.finished {
            (0, false)
        } else {
            let from = if l.checkpoint.is_empty() {
                StartPosition::TrimHorizon
            } else {
                StartPosition::AfterSequenceNumber(l.checkpoint.clone())
            };
            let it = client.get_shard_iterator(stream, &l.shard_id, from).await?;
            let page = client.get_records(&it, 1).await?;
            (page.millis_behind_latest, !page.records.is_empty())
        };
        leases.push(json!({
            "shard_id": l.shard_id,
            "owner": (!l.owner.is_empty()).then_some(&l.owner),
            "epoch": l.epoch,
            "expires_in_ms": (l.expires_ms - g.server_time_ms).max(0),
            "checkpoint": (!l.checkpoint.is_empty()).then_some(&l.checkpoint),
            "finished": l.finished,
            "lag_ms": lag_ms,
            "records_pending": pending,
        }));
    }
    let doc = json!({"stream": stream, "group": group, "workers": g.workers, "leases": leases});
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}
