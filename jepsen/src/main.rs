//! `millrace-jepsen`:
//! * `test --nodes 5 --time-limit 120 --nemesis kill,pause,partition,clock --rate 200 --seed S`
//!   runs a cluster in network namespaces under faults, checks the history, writes the report
//!   and prints where it is; exits 1 on an anomaly, 2 on a vacuous run or a harness error.
//! * `check HISTORY.jsonl [--idempotent]` checks a recorded history.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use millrace_jepsen::nemesis::FaultKind;
use millrace_jepsen::run::{self, RunConfig, Via};
use millrace_jepsen::{checker, history};

#[derive(Parser)]
#[command(
    name = "millrace-jepsen",
    about = "Fault injection and history checking for Millrace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cluster under faults, check the history and write the report (needs root).
    Test(Box<TestArgs>),
    /// Summarise run folders (the nightly tier's table): per run its nemeses, rate, ok
    /// operations, anomalies and problems, and the longest unavailability after each kind of
    /// fault; then the totals. Exit status 0 only when every run is valid.
    Summarize {
        /// Run report folders, or folders each holding one (a run's `--results`).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Also write the table (Markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a history file (JSON lines) and print the report.
    Check {
        history: PathBuf,
        /// The run used the idempotent producer: any duplicate is an anomaly.
        #[arg(long)]
        idempotent: bool,
    },
}

#[derive(clap::Args)]
struct TestArgs {
    /// Nodes in the cluster (3 or 5), each in its own network namespace.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of workload under faults (the heal and the final read come after).
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
    /// Faults, comma-separated: kill, pause, partition, clock, reshard, power-loss, net,
    /// corrupt, membership (4 nodes or more) (or `none`).
    #[arg(long, default_value = "kill,pause,partition,clock")]
    nemesis: String,
    /// Operations per second over all workers.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seed of every random choice of the run (faults, keys, ops); random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// The API the workload writes and reads through: native (gRPC) or kinesis (HTTP).
    #[arg(long, default_value = "native")]
    workload: String,
    /// Concurrent client processes (default: twice the nodes).
    #[arg(long)]
    workers: Option<usize>,
    /// Shards per workload stream (keys: one per shard).
    #[arg(long, default_value_t = 3)]
    shards: u32,
    /// Do not use the idempotent producer (native API): duplicates of `info` sends are then
    /// allowed and counted.
    #[arg(long)]
    no_idempotent: bool,
    /// Quiet seconds between faults, as MIN-MAX.
    #[arg(long, default_value = "3-8")]
    quiet: String,
    /// Seconds a fault holds, as MIN-MAX.
    #[arg(long, default_value = "5-12")]
    hold: String,
    /// Which nodes kill and pause hit, comma-separated among one, shard-leader, minority,
    /// majority, all (default: any).
    #[arg(long, default_value = "")]
    targets: String,
    /// Which partitions, comma-separated among halves, leader, zone, one-way, ring (default:
    /// any).
    #[arg(long, default_value = "")]
    partitions: String,
    /// Where run reports go (a folder per run).
    #[arg(long)]
    results: Option<PathBuf>,
    /// The `millrace` binary to test (default: build and use target/release/millrace).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// NOT A FEATURE: start every node with this calibration bug, to check the harness
    /// catches it (ack-before-fsync, skip-fsync, ignore-crc, skip-sequence-number,
    /// uncommitted-reads). Needs a debug
    /// binary or one built with `--features calibration-bugs`.
    #[arg(long)]
    calibration_bug: Option<String>,
    /// Keep the nodes' data directories in the report folder.
    #[arg(long)]
    keep_data: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("jepsen/ sits in the workspace")
        .to_path_buf()
}

/// Builds `millrace` in release mode (a no-op when up to date) and returns its path.
fn release_binary(with_bugs: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let mut cmd = std::process::Command::new(cargo);
    // As the README's `cargo run --release --bin millrace -- dev` builds it.
    cmd.current_dir(&root)
        .args(["build", "--release", "--bin", "millrace"]);
    let target = if with_bugs {
        // A separate target dir keeps the calibration build away from the real binary.
        cmd.args([
            "--features",
            "millrace-node/calibration-bugs",
            "--target-dir",
        ])
        .arg(root.join("target/calibration"));
        root.join("target/calibration/release/millrace")
    } else {
        root.join("target/release/millrace")
    };
    let status = cmd.status().context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build of millrace failed");
    Ok(target)
}

fn range(text: &str, what: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = text
        .split_once('-')
        .with_context(|| format!("--{what} {text:?} is not MIN-MAX"))?;
    let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(0.0 < a && a <= b, "--{what} {text:?}: need 0 < MIN <= MAX");
    Ok((a, b))
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes {}: between 1 and 9",
        args.nodes
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate {}: between 0 and 10000 ops/s",
        args.rate
    );
    let nemeses: Vec<FaultKind> = if args.nemesis == "none" {
        Vec::new()
    } else {
        args.nemesis
            .split(',')
            .map(|s| s.trim().parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?
    };
    let binary = match args.binary {
        Some(b) => b,
        None => release_binary(args.calibration_bug.is_some())?,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut config = RunConfig::new(
        binary,
        args.nodes,
        Duration::from_secs(args.time_limit),
        nemeses,
        args.rate,
        seed,
    );
    config.via = args.workload.parse::<Via>().map_err(anyhow::Error::msg)?;
    if let Some(w) = args.workers {
        config.workers = w.max(1);
    }
    anyhow::ensure!(
        (1..=64).contains(&args.shards),
        "--shards {}: between 1 and 64",
        args.shards
    );
    config.shards_per_stream = args.shards;
    config.idempotent = !args.no_idempotent;
    config.quiet_s = range(&args.quiet, "quiet")?;
    config.hold_s = range(&args.hold, "hold")?;
    config.results = args
        .results
        .unwrap_or_else(|| workspace_root().join("jepsen/results"));
    config.targets = list(&args.targets);
    config.partitions = list(&args.partitions);
    config.inject_bug = args.calibration_bug;
    config.keep_data = args.keep_data;
    eprintln!(
        "millrace-jepsen: {} nodes, {} s, nemesis {}, rate {}, seed {seed}",
        args.nodes, args.time_limit, args.nemesis, args.rate
    );
    let outcome = run::run(&config)?;
    let s = &outcome.summary;
    eprintln!(
        "sends ok/fail/info {}/{}/{}, polls ok/fail/info {}/{}/{}, faults {}",
        s["ops"]["send"]["ok"],
        s["ops"]["send"]["fail"],
        s["ops"]["send"]["info"],
        s["ops"]["poll"]["ok"],
        s["ops"]["poll"]["fail"],
        s["ops"]["poll"]["info"],
        s["faults"].as_array().map_or(0, Vec::len),
    );
    if let Some(keys) = s["drain_incomplete_keys"]
        .as_array()
        .filter(|k| !k.is_empty())
    {
        eprintln!(
            "WARNING: the final read could not finish {} key(s) after healing (liveness): {}",
            keys.len(),
            s["drain_incomplete_keys"]
        );
    }
    if s["replicas_converged"] == false {
        eprintln!("WARNING: replicas did not reach the same applied index after healing");
    }
    if !outcome.anomalies.is_empty() {
        eprintln!("ANOMALIES: {}", outcome.anomalies.join(", "));
    }
    for v in &outcome.vacuous {
        eprintln!("VACUOUS: {v}");
    }
    println!("report: {}", outcome.dir.join("summary.json").display());
    Ok(if !outcome.anomalies.is_empty() {
        ExitCode::from(1)
    } else if !outcome.vacuous.is_empty() {
        ExitCode::from(2)
    } else {
        eprintln!("valid: no anomaly");
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JEPSEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Test(args) => test(*args),
        Command::Summarize { dirs, out } => (|| {
            let rows: Vec<_> = dirs
                .iter()
                .map(|d| millrace_jepsen::nightly::read_run(d))
                .collect();
            let table = millrace_jepsen::nightly::table(&rows);
            print!("{table}");
            if let Some(out) = out {
                std::fs::write(out, &table)?;
            }
            Ok(if millrace_jepsen::nightly::all_valid(&rows) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        })(),
        Command::Check {
            history,
            idempotent,
        } => (|| {
            let text = std::fs::read_to_string(&history)?;
            let events = history::parse(&text).map_err(anyhow::Error::msg)?;
            let report = checker::check(&events, checker::Options { idempotent });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        })(),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}
