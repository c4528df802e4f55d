//! Reads every shard of the `example` stream from the start with shard readers, following
//! closed shards into their children, and prints how many records each shard held.
//! Run the `producer` example first.

use std::collections::VecDeque;

use millrace_client::{Client, ShardReader, StartPosition};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::var("MILLRACE_ENDPOINT").unwrap_or_else(|_| {
        "http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103".into()
    });
    let client = Client::connect(endpoints.split(','))?;
    let shards = client.list_shards("example").await?;
    // Start with the shards whose parents are gone; children are queued when parents end.
    let ids: Vec<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
    let mut queue: VecDeque<String> = shards
        .iter()
        .filter(|s| !ids.contains(&s.parent_shard_id) && !ids.contains(&s.adjacent_parent_shard_id))
        .map(|s| s.shard_id.clone())
        .collect();
    let mut done = Vec::new();
    while let Some(shard) = queue.pop_front() {
        if done.contains(&shard) {
            continue;
        }
        let mut reader = ShardReader::new(
            client.clone(),
            "example",
            &shard,
            StartPosition::TrimHorizon,
        )
        .await?;
        let mut count = 0;
        while let Some(page) = reader.next_page(10_000).await? {
            count += page.records.len();
            queue.extend(page.child_shard_ids.iter().cloned());
            if page.records.is_empty() && page.millis_behind_latest == 0 {
                break; // an open shard, caught up
            }
        }
        println!(
            "{shard}: {count} records (resume at {:?})",
            reader.resume_position()
        );
        done.push(shard);
    }
    Ok(())
}
