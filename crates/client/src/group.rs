//! Consumer-group workers: `millrace group consume` and [`GroupWorker`]. A worker heartbeats its
//! group (taking and renewing leases), reads each leased shard from its checkpoint, hands every
//! record to the caller, checkpoints after each page it handed out, marks a closed shard
//! finished at its end (so its children are handed out), and releases its leases when it stops.
//! Delivery is at-least-once: a record handed out after the last checkpoint may be handed out
//! again by the next owner of the lease.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::cli::{record_json, CliError};
use crate::proto as pb;
use crate::{Client, ClientError, Record, ShardReader, StartPosition};

/// Records read per shard per step.
const PAGE_RECORDS: u32 = 1000;

/// One worker of a consumer group.
pub struct GroupWorker {
    client: Client,
    stream: String,
    group: String,
    worker_id: String,
    lease_ms: u32,
    /// Readers of the leases held, by shard id, with the lease they were opened under.
    readers: BTreeMap<String, (pb::ShardLease, ShardReader)>,
}

impl GroupWorker {
    pub fn new(client: Client, stream: &str, group: &str, worker_id: &str, lease_ms: u32) -> Self {
        GroupWorker {
            client,
            stream: stream.to_string(),
            group: group.to_string(),
            worker_id: worker_id.to_string(),
            lease_ms,
            readers: BTreeMap::new(),
        }
    }

    /// Heartbeats, then opens readers for new leases and drops those of leases lost.
    pub async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let leases = self
            .client
            .group_heartbeat(&self.stream, &self.group, &self.worker_id, self.lease_ms)
            .await?;
        let held: BTreeMap<String, pb::ShardLease> = leases
            .into_iter()
            .map(|l| (l.shard_id.clone(), l))
            .collect();
        self.readers
            .retain(|shard, (lease, _)| held.get(shard).is_some_and(|h| h.epoch == lease.epoch));
        for (shard, lease) in held {
            if self.readers.contains_key(&shard) {
                continue;
            }
            let from = if lease.checkpoint.is_empty() {
                StartPosition::TrimHorizon
            } else {
                StartPosition::AfterSequenceNumber(lease.checkpoint.clone())
            };
            let reader = ShardReader::new(self.client.clone(), &self.stream, &shard, from).await?;
            self.readers.insert(shard, (lease, reader));
        }
        Ok(())
    }

    /// Reads one page from every leased shard, hands its records to `handle`, and checkpoints
    /// them. Returns how many records were handed out.
    pub async fn step(
        &mut self,
        handle: &mut dyn FnMut(&str, &Record) -> Result<(), CliError>,
    ) -> Result<usize, CliError> {
        let mut handed = 0;
        let mut lost = Vec::new();
        for (shard, (lease, reader)) in self.readers.iter_mut() {
            let Some(page) = reader.next_page(PAGE_RECORDS).await? else {
                continue;
            };
            for r in &page.records {
                handle(shard, r)?;
            }
            handed += page.records.len();
            let finished = page.next_shard_iterator.is_empty();
            if page.records.is_empty() && !finished {
                continue;
            }
            let last = page
                .records
                .last()
                .map(|r| r.sequence_number.clone())
                .unwrap_or_default();
            let checkpoint = self
                .client
                .checkpoint_lease(
                    &self.stream,
                    &self.group,
                    &self.worker_id,
                    lease,
                    &last,
                    finished,
                )
                .await;
            match checkpoint {
                Ok(()) if finished => lost.push(shard.clone()),
                Ok(()) => {}
                // Fenced: the lease moved on; stop reading this shard.
                Err(ClientError::Server { symbol, .. }) if symbol == "RESOURCE_IN_USE" => {
                    lost.push(shard.clone())
                }
                Err(e) => return Err(e.into()),
            }
        }
        for shard in lost {
            self.readers.remove(&shard);
        }
        Ok(handed)
    }

    /// Releases every lease (checkpoints were stored as records were handed out).
    pub async fn release(&mut self) -> Result<(), ClientError> {
        self.readers.clear();
        self.client
            .release_leases(&self.stream, &self.group, &self.worker_id)
            .await
    }
}

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
