//! The load generators: a closed loop of `in_flight` workers, each sending one record per
//! request and waiting for its acknowledgement (a JetStream publish ack; a PutRecords answer)
//! before sending the next, so exactly `in_flight` requests are outstanding on both systems.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use millrace_client::{Client, PutRecord, StartPosition};

/// What one timed load phase achieved.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Per-request latencies, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    pub first_error: Option<String>,
}

impl Load {
    pub fn records_per_second(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1] as f64 / 1000.0
    }
}

/// Runs `in_flight` workers calling `send(worker, i)` until `duration` has passed.
pub async fn drive<F, Fut>(in_flight: usize, duration: Duration, send: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let (send, counter) = (send.clone(), counter.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut errors, mut first_error) = (0u64, None);
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    match send(w, i).await {
                        Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    let mut load = Load::default();
    for w in workers {
        let Ok((lat, errors, first_error)) = w.await else {
            load.errors += 1;
            continue;
        };
        load.ok += lat.len() as u64;
        load.latencies_us.extend(lat);
        load.errors += errors;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.seconds = started.elapsed().as_secs_f64();
    load.latencies_us.sort_unstable();
    load
}

/// NATS JetStream: an R3 file stream per case, published to through one connection.
pub struct Nats {
    js: jetstream::Context,
}

impl Nats {
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Nats> {
        let addrs: Vec<async_nats::ServerAddr> = endpoints
            .iter()
            .map(|e| e.parse())
            .collect::<Result<_, _>>()
            .context("NATS endpoints")?;
        let client = async_nats::connect(addrs)
            .await
            .context("connecting to NATS")?;
        Ok(Nats {
            js: jetstream::new(client),
        })
    }

    pub async fn create_stream(&self, name: &str) -> anyhow::Result<()> {
        self.js
            .create_stream(jetstream::stream::Config {
                name: name.to_string(),
                subjects: vec![format!("{name}.>")],
                num_replicas: 3,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create stream {name}: {e}"))?;
        Ok(())
    }

    pub async fn produce(
        &self,
        stream: &str,
        record_bytes: usize,
        in_flight: usize,
        duration: Duration,
    ) -> Load {
        let js = self.js.clone();
        let payload = Bytes::from(vec![b'x'; record_bytes]);
        let subject = format!("{stream}.records");
        drive(in_flight, duration, move |_, _| {
            let (js, payload, subject) = (js.clone(), payload.clone(), subject.clone());
            async move {
                js.publish(subject, payload)
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e}"))?
                    .await
                    .map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
                Ok(())
            }
        })
        .await
    }

    /// Reads the whole stream back through a pull consumer; returns (records, seconds).
    pub async fn read_back(&self, stream: &str, expected: u64) -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow::anyhow!("get stream: {e}"))?;
        let consumer = s
            .create_consumer(jetstream::consumer::pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("consume: {e}"))?;
        let mut n = 0u64;
        while n < expected {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(_))) => n += 1,
                Ok(Some(Err(e))) => bail!("read back: {e}"),
                Ok(None) | Err(_) => break,
            }
        }
        Ok((n, started.elapsed().as_secs_f64()))
    }
}

/// Millrace: a stream of 1 or 4 shards per case, written through the native client.
pub struct Millrace {
    client: Client,
}

impl Millrace {
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Millrace> {
        let client = Client::discover(endpoints.iter(), Default::default()).await?;
        Ok(Millrace { client })
    }

    pub async fn create_stream(&self, name: &str, shards: u32) -> anyhow::Result<()> {
        self.client.create_stream(name, shards).await?;
        self.client
            .wait_for_active(name, Duration::from_secs(60))
            .await?;
        Ok(())
    }

    pub async fn produce(
        &self,
        stream: &str,
        record_bytes: usize,
        in_flight: usize,
        duration: Duration,
    ) -> Load {
        let client = self.client.clone();
        let payload = Arc::new(vec![b'x'; record_bytes]);
        let stream = Arc::new(stream.to_string());
        drive(in_flight, duration, move |w, i| {
            let (client, payload, stream) = (client.clone(), payload.clone(), stream.clone());
            async move {
                let record = PutRecord::new(format!("k-{w}-{i}"), payload.to_vec());
                let results = client.put_records(&stream, vec![record]).await?;
                match results.into_iter().next() {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => bail!("{}: {}", e.code, e.message),
                    None => bail!("no result"),
                }
            }
        })
        .await
    }

    /// Reads every shard from TRIM_HORIZON to its end (all shards at once); returns
    /// (records, seconds).
    pub async fn read_back(&self, stream: &str, expected: u64) -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let shards = self.client.list_shards(stream).await?;
        let reads = shards.into_iter().map(|shard| {
            let client = self.client.clone();
            let stream = stream.to_string();
            async move {
                let mut it = client
                    .get_shard_iterator(&stream, &shard.shard_id, StartPosition::TrimHorizon)
                    .await?;
                let mut n = 0u64;
                loop {
                    let page = client.get_records(&it, 10_000).await?;
                    if page.records.is_empty() {
                        return anyhow::Ok(n);
                    }
                    n += page.records.len() as u64;
                    it = page.next_shard_iterator;
                }
            }
        });
        let mut n = 0;
        for r in futures::future::join_all(reads).await {
            n += r?;
        }
        if n < expected {
            bail!("read back {n} of {expected} records");
        }
        Ok((n, started.elapsed().as_secs_f64()))
    }
}
