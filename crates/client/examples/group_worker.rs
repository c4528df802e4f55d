//! A consumer-group worker: joins group `example-app` on the `example` stream, processes every
//! record (here: counts them per partition key), checkpoints after each page, and leaves the
//! group cleanly on Ctrl-C. Start several at once and they share the shards; stop one and the
//! others take its leases over. Run the `producer` example first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_client::{Client, ClientConfig, ClientError, GroupWorker, Record};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds =
        std::env::var("MILLRACE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7101".into());
    let client = Client::discover(seeds.split(','), ClientConfig::default()).await?;
    let worker_id = format!("worker-{}", std::process::id());
    let mut worker = GroupWorker::new(client, "example", "example-app", &worker_id, 10_000);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut next_heartbeat = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_heartbeat {
            worker.heartbeat().await?;
            next_heartbeat = Instant::now() + Duration::from_secs(3);
        }
        let mut count = |_shard: &str, r: &Record| -> Result<(), ClientError> {
            *counts.entry(r.partition_key.clone()).or_default() += 1;
            Ok(())
        };
        if worker.step(&mut count).await? == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    worker.release().await?;
    println!(
        "{worker_id} processed {} records over {} keys",
        counts.values().sum::<u64>(),
        counts.len()
    );
    Ok(())
}
