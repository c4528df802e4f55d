//! Writes 10,000 records with an idempotent, batching producer and prints the throughput.
//! Run `millrace dev` first, then `cargo run -p millrace-client --example producer`.

use std::time::Instant;

use millrace_client::{Client, Producer, ProducerConfig, PutRecord};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::var("MILLRACE_ENDPOINT").unwrap_or_else(|_| {
        "http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103".into()
    });
    let client = Client::connect(endpoints.split(','))?;
    if client.describe_stream("example").await.is_err() {
        client.create_stream("example", 4).await?;
    }
    client
        .wait_for_active("example", std::time::Duration::from_secs(60))
        .await?;
    let config = ProducerConfig {
        idempotent: true,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, "example", config).await?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..10_000 {
        let key = format!("sensor-{}", i % 100);
        let record = PutRecord::new(key, format!("reading {i}").into_bytes());
        pending.push(producer.send(record).await?);
    }
    producer.flush().await?;
    let mut written = 0;
    for p in pending {
        p.await?;
        written += 1;
    }
    producer.close().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {written} records in {secs:.2}s ({:.0} records/s)",
        written as f64 / secs
    );
    Ok(())
}
