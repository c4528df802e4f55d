//! `millrace tail`: every shard of a stream through SubscribeToShard (enhanced fan-out), printed
//! as JSON lines like `read`. Closed shards hand over to their children; a subscription that
//! reaches its 5-minute end is renewed from its continuation sequence number.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use tokio::sync::mpsc;

use crate::{record_json, CliError};
use millrace_client::{Client, ClientError, ShardEvent, ShardSubscription, StartPosition};

/// What a shard's subscription task reports.
enum Update {
    Event(ShardEvent),
    Failed(ClientError),
}

/// Registers a temporary consumer, prints records until caught up (or, with `follow`, until
/// interrupted or `limit` records), then deregisters the consumer.
pub async fn tail(
    client: &Client,
    stream: &str,
    from: StartPosition,
    follow: bool,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let nonce: u32 = rand::random();
    let name = format!("millrace-tail-{nonce:08x}");
    let consumer = client.register_consumer(stream, &name).await?;
    let result = tokio::select! {
        r = follow_shards(client, stream, &consumer.consumer_arn, from, follow, limit, out) => r,
        _ = interrupted() => Ok(()),
    };
    if let Err(e) = client.deregister_consumer(stream, &name).await {
        tracing::warn!(consumer = %name, error = %e, "cannot deregister the tail consumer");
    }
    result
}

pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn follow_shards(
    client: &Client,
    stream: &str,
    consumer_arn: &str,
    from: StartPosition,
    follow: bool,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let shards = client.list_shards(stream).await?;
    let ids: BTreeSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    // From the latest point, the open shards; from anywhere else, the oldest shards whose
    // parents are gone (their children follow as they finish).
    let start: Vec<String> = shards
        .iter()
        .filter(|s| match from {
            StartPosition::Latest => s
                .sequence_number_range
                .as_ref()
                .is_none_or(|r| r.ending_sequence_number.is_empty()),
            _ => {
                !ids.contains(s.parent_shard_id.as_str())
                    && !ids.contains(s.adjacent_parent_shard_id.as_str())
            }
        })
        .map(|s| s.shard_id.clone())
        .collect();
    let (tx, mut rx) = mpsc::channel::<(String, Update)>(64);
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut caught_up: HashMap<String, bool> = HashMap::new();
    for shard in start {
        spawn_subscription(client, consumer_arn, &shard, from.clone(), tx.clone());
        caught_up.insert(shard.clone(), false);
        started.insert(shard);
    }
    let mut printed = 0u64;
    while let Some((shard, update)) = rx.recv().await {
        let event = match update {
            Update::Event(e) => e,
            Update::Failed(e) => return Err(e.into()),
        };
        let quiet = event.records.is_empty() && event.millis_behind_latest == 0;
        for record in &event.records {
            writeln!(out, "{}", record_json(&shard, record))?;
            printed += 1;
            if limit.is_some_and(|l| printed >= l) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
        if !event.child_shard_ids.is_empty() {
            // The shard is closed and read to its end: its children take over.
            caught_up.remove(&shard);
            for child in event.child_shard_ids {
                if started.insert(child.clone()) {
                    let at = StartPosition::TrimHorizon;
                    spawn_subscription(client, consumer_arn, &child, at, tx.clone());
                    caught_up.insert(child, false);
                }
            }
        } else if quiet {
            caught_up.insert(shard, true);
        }
        if !follow && caught_up.values().all(|c| *c) {
            return Ok(());
        }
    }
    Ok(())
}

/// One shard's subscription (renewed at its 5-minute ends), until the shard's end (an event
/// with child shards) or an error.
fn spawn_subscription(
    client: &Client,
    consumer_arn: &str,
    shard: &str,
    from: StartPosition,
    tx: mpsc::Sender<(String, Update)>,
) {
    let mut subscription = ShardSubscription::new(client.clone(), consumer_arn, shard, from);
    let shard = shard.to_string();
    tokio::spawn(async move {
        loop {
            match subscription.next_event().await {
                Ok(Some(event)) => {
                    let ended = !event.child_shard_ids.is_empty();
                    if tx
                        .send((shard.clone(), Update::Event(event)))
                        .await
                        .is_err()
                        || ended
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send((shard, Update::Failed(e))).await;
                    return;
                }
            }
        }
    });
}
