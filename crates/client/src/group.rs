//! Consumer-group workers ([`GroupWorker`]; `millrace group consume` is one). A worker heartbeats its
//! group (taking and renewing leases), reads each leased shard from its checkpoint, hands every
//! record to the caller, checkpoints after each page it handed out, marks a closed shard
//! finished at its end (so its children are handed out), and releases its leases when it stops.
//! Delivery is at-least-once: a record handed out after the last checkpoint may be handed out
//! again by the next owner of the lease.

use std::collections::BTreeMap;

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
    /// them. Returns how many records were handed out. An error from `handle` stops the step
    /// before that page is checkpointed, and is returned; this worker's readers have moved past
    /// the page by then, so do not call `step` again: release the worker (or let its leases
    /// expire), and the next owner of each lease reads again from its checkpoint.
    pub async fn step<E: From<ClientError>>(
        &mut self,
        handle: &mut dyn FnMut(&str, &Record) -> Result<(), E>,
    ) -> Result<usize, E> {
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
