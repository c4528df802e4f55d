//! One test run end to end: start the cluster, run the workload under the nemeses, heal, drain,
//! check the history, and write the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use millrace_client::Client;
use serde_json::{json, Value};

use crate::api::{client_config, Api, KinesisHttp};
use crate::checker::{self, Options};
use crate::cluster::{Cluster, ClusterConfig};
use crate::nemesis::{check_shapes, FaultKind, Nemesis, Schedule, PARTITIONS, TARGETS};
use crate::replicas;
use crate::report;
use crate::workload::{Recorder, Workload, WorkloadConfig};

/// Which API the workload's data path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Native,
    Kinesis,
}

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Via::Native),
            "kinesis" => Ok(Via::Kinesis),
            other => Err(format!("unknown workload API {other:?}; native or kinesis")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub binary: PathBuf,
    pub results: PathBuf,
    pub nodes: usize,
    pub time_limit: Duration,
    pub nemeses: Vec<FaultKind>,
    pub rate: f64,
    pub seed: u64,
    pub via: Via,
    pub workers: usize,
    pub shards_per_stream: u32,
    pub rotate_after_values: u64,
    pub idempotent: bool,
    pub quiet_s: (f64, f64),
    pub hold_s: (f64, f64),
    /// Kill/pause target shapes and partition shapes allowed (empty: any).
    pub targets: Vec<String>,
    pub partitions: Vec<String>,
    /// Fewer `ok` sends than this makes the run vacuous.
    pub min_ok_sends: usize,
    pub drain_timeout: Duration,
    pub inject_bug: Option<String>,
    /// Keep the nodes' data directories after the run (they are deleted otherwise).
    pub keep_data: bool,
}

impl RunConfig {
    /// The defaults behind the contract command; `nodes`, `time_limit`, `nemeses`, `rate` and
    /// `seed` as given.
    pub fn new(
        binary: PathBuf,
        nodes: usize,
        time_limit: Duration,
        nemeses: Vec<FaultKind>,
        rate: f64,
        seed: u64,
    ) -> RunConfig {
        let expected_sends = rate * time_limit.as_secs_f64() * 0.45;
        RunConfig {
            binary,
            results: PathBuf::from("jepsen/results"),
            nodes,
            time_limit,
            nemeses,
            rate,
            seed,
            via: Via::Native,
            workers: (2 * nodes).max(4),
            shards_per_stream: 3,
            rotate_after_values: 300,
            idempotent: true,
            quiet_s: (3.0, 8.0),
            hold_s: (5.0, 12.0),
            targets: Vec::new(),
            partitions: Vec::new(),
            min_ok_sends: ((expected_sends * 0.1) as usize).max(10),
            drain_timeout: Duration::from_secs(90),
            inject_bug: None,
            keep_data: false,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    /// No anomaly and not vacuous.
    pub valid: bool,
    pub anomalies: Vec<String>,
    /// Why the run tested too little to count, if it did.
    pub vacuous: Vec<String>,
    pub summary: Value,
}

fn run_dir(results: &Path, seed: u64) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = results.join(format!("{stamp}-seed{seed}"));
    std::fs::create_dir_all(&dir)?;
    Ok(std::fs::canonicalize(&dir)?)
}

/// What the run's cluster and nemeses need that this machine lacks, each with what to do: the
/// namespaces and partitions need `ip` and `iptables`, the clock nemesis libfaketime. Checked
/// before anything starts, so that a missing tool is said plainly instead of every fault of
/// its kind coming out "did not take effect".
pub fn missing_prerequisites(
    nemeses: &[FaultKind],
    has_command: &dyn Fn(&str) -> bool,
    has_file: &dyn Fn(&Path) -> bool,
) -> Vec<String> {
    let mut missing = Vec::new();
    for tool in ["ip", "iptables"] {
        if !has_command(tool) {
            missing.push(format!("`{tool}` (network namespaces and partitions)"));
        }
    }
    if nemeses.contains(&FaultKind::Clock) && !has_file(Path::new(crate::cluster::LIBFAKETIME)) {
        missing.push(format!(
            "libfaketime ({}) for the clock nemesis",
            crate::cluster::LIBFAKETIME
        ));
    }
    if nemeses.contains(&FaultKind::PowerLoss) && !has_file(Path::new("/dev/fuse")) {
        missing.push("/dev/fuse (the `fuse` kernel module) for the power-loss nemesis".into());
    }
    missing
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
}

/// Runs one test. Needs root (network namespaces, iptables).
pub fn run(config: &RunConfig) -> anyhow::Result<RunOutcome> {
    let missing = missing_prerequisites(&config.nemeses, &on_path, &|p| p.exists());
    if !missing.is_empty() {
        anyhow::bail!(
            "this machine lacks {}: run jepsen/scripts/setup.sh (as root) first",
            missing.join(", ")
        );
    }
    check_shapes(&config.targets, &TARGETS, "target").map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !config.nemeses.contains(&FaultKind::Membership) || config.nodes >= 4,
        "the membership nemesis needs --nodes 4 or more: with 3 nodes and 3 replicas per shard \
         no replica has anywhere to move"
    );
    check_shapes(&config.partitions, &PARTITIONS, "partition").map_err(anyhow::Error::msg)?;
    let dir = run_dir(&config.results, config.seed)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run_in(config, &dir));
    if !config.keep_data {
        for i in 0..config.nodes {
            let _ = std::fs::remove_dir_all(dir.join(format!("n{}", i + 1)));
        }
    }
    result
}

async fn run_in(config: &RunConfig, dir: &Path) -> anyhow::Result<RunOutcome> {
    let cluster = Cluster::start(ClusterConfig {
        binary: config.binary.clone(),
        dir: dir.to_path_buf(),
        nodes: config.nodes,
        faketime: config.nemeses.contains(&FaultKind::Clock),
        lazy_fs: config.nemeses.contains(&FaultKind::PowerLoss),
        // Replicas of a node silent this long are re-created elsewhere: soon enough for the
        // membership nemesis to see it within a fault; otherwise never within a run.
        dead_node_timeout: if config.nemeses.contains(&FaultKind::Membership) {
            format!("{}s", crate::nemesis::MEMBERSHIP_DEAD_NODE_TIMEOUT_S)
        } else {
            "1h".into()
        },
        inject_bug: config.inject_bug.clone(),
    })?;
    cluster.wait_ready(Duration::from_secs(60))?;
    let grpc: Vec<String> = (0..cluster.len()).map(|i| cluster.grpc_url(i)).collect();
    let http: Vec<String> = (0..cluster.len()).map(|i| cluster.http_addr(i)).collect();
    let admin = discover(&grpc, Duration::from_secs(60)).await?;

    let recorder = Arc::new(Recorder::new(&dir.join("history.jsonl"))?);
    let make_api: Box<dyn Fn() -> Api + Send + Sync> = match config.via {
        Via::Native => {
            let grpc = grpc.clone();
            Box::new(move || {
                Api::Native(
                    Client::with_config(&grpc, client_config()).expect("endpoints are valid"),
                )
            })
        }
        Via::Kinesis => {
            let http = http.clone();
            Box::new(move || Api::Kinesis(Box::new(KinesisHttp::new(http.clone()))))
        }
    };
    let workload = Workload::new(
        WorkloadConfig {
            workers: config.workers,
            rate: config.rate,
            shards_per_stream: config.shards_per_stream,
            rotate_after_values: config.rotate_after_values,
            idempotent: config.idempotent,
            seed: config.seed,
        },
        recorder.clone(),
        admin,
        make_api,
    );
    workload
        .rotate(Duration::from_secs(60))
        .await
        .context("creating the first workload stream")?;

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let schedule = Schedule {
        kinds: config.nemeses.clone(),
        quiet_s: config.quiet_s,
        hold_s: config.hold_s,
        seed: config.seed,
        targets: config.targets.clone(),
        partitions: config.partitions.clone(),
    };
    let nemesis_stop = stop.clone();
    let nemesis_recorder = recorder.clone();
    let nemesis_admin = Client::with_config(&grpc, client_config())?;
    let handle = tokio::runtime::Handle::current();
    let nemesis = tokio::task::spawn_blocking(move || {
        let mut n =
            Nemesis::new(cluster, nemesis_recorder, &schedule).with_admin(handle, nemesis_admin);
        n.run(&schedule, &nemesis_stop);
        let healed = n.heal_all();
        (n, healed)
    });
    let mut tasks = Vec::new();
    for id in 0..config.workers {
        tasks.push(tokio::spawn(workload.clone().worker(id)));
    }
    let rotator = tokio::spawn(workload.clone().rotator());

    tokio::time::sleep(config.time_limit).await;
    workload.stop.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let _ = rotator.await;
    let (nemesis, healed) = nemesis.await?;
    healed.context("healing the cluster before the final read")?;
    let load_s = started.elapsed().as_secs_f64();

    // The final read, through the same API as the workload.
    let drain_api = match config.via {
        Via::Native => Api::Native(Client::with_config(&grpc, client_config())?),
        Via::Kinesis => Api::Kinesis(Box::new(KinesisHttp::new(http.clone()))),
    };
    let incomplete = workload.drain(&drain_api, config.drain_timeout).await;
    let (cluster, faults) = nemesis.into_cluster_with_faults();
    let (applied, converged) = applied_indexes(&cluster, Duration::from_secs(30)).await;
    if !incomplete.is_empty() || !converged {
        // Evidence for whoever looks into it: every node's own view at the end.
        let statuses: Vec<Value> = (0..cluster.len())
            .map(|i| json!({"node": cluster.name(i), "status": cluster.status(i)}))
            .collect();
        std::fs::write(
            dir.join("status-at-end.json"),
            serde_json::to_string_pretty(&statuses)?,
        )?;
    }
    let names: Vec<(String, PathBuf)> = (0..cluster.len())
        .map(|i| (cluster.name(i), dir.join(cluster.name(i))))
        .collect();
    drop(cluster);
    let replicas = replicas::compare(&names, &applied);

    let events = recorder.events();
    let report = checker::check(
        &events,
        Options {
            idempotent: config.idempotent && config.via == Via::Native,
        },
    );
    let mut vacuous = Vec::new();
    if report.stats.sends.ok < config.min_ok_sends {
        vacuous.push(format!(
            "only {} ok sends (at least {} needed)",
            report.stats.sends.ok, config.min_ok_sends
        ));
    }
    if !config.nemeses.is_empty() && faults.is_empty() {
        vacuous.push("no fault was applied".into());
    }
    for f in faults.iter().filter(|f| !f.applied) {
        vacuous.push(format!(
            "fault at {:.1}s did not take effect: {}",
            f.start_s, f.action
        ));
    }
    let mut anomalies: Vec<String> = report.anomalies.keys().map(|k| k.to_string()).collect();
    if !replicas.divergent.is_empty() {
        anomalies.push("replica-divergence".into());
    }
    if !converged {
        // Compared up to the lowest applied index all the same; a replica that stays behind
        // after healing is a liveness problem, reported in the summary.
        tracing::warn!("replicas did not reach the same applied index within 30 s of healing");
    }
    let duration_s = recorder.elapsed().as_secs_f64();
    let ops = report::timings(&events);
    let mut plots = Vec::new();
    for (name, result) in [
        (
            "latency.svg",
            report::latency_plot(&dir.join("latency.svg"), &ops, &faults, duration_s),
        ),
        (
            "throughput.svg",
            report::throughput_plot(&dir.join("throughput.svg"), &ops, &faults, duration_s),
        ),
    ] {
        match result {
            Ok(()) => plots.push(name.to_string()),
            Err(e) => vacuous.push(format!("plot {name} failed: {e}")),
        }
    }
    let valid = anomalies.is_empty() && vacuous.is_empty();
    let summary = json!({
        "valid": valid,
        "anomalies_found": anomalies,
        "vacuous": vacuous,
        "config": {
            "nodes": config.nodes,
            "time_limit_s": config.time_limit.as_secs_f64(),
            "nemesis": config.nemeses,
            "rate": config.rate,
            "seed": config.seed,
            "workload": format!("log via {:?}", config.via).to_lowercase(),
            "workers": config.workers,
            "idempotent_producer": config.idempotent && config.via == Via::Native,
            "calibration_bug": config.inject_bug,
        },
        "duration_s": duration_s,
        "load_s": load_s,
        "ops": {
            "send": report.stats.sends,
            "poll": report.stats.polls,
            "values_sent_ok": report.stats.values_sent_ok,
            "values_read": report.stats.values_read,
        },
        "keys": workload.keys().len(),
        "drain_incomplete_keys": incomplete,
        "faults": faults,
        "checker": report,
        "replicas": replicas,
        "replicas_converged": converged,
        "files": {
            "history": "history.jsonl",
            "plots": plots,
            "node_logs": (1..=config.nodes).map(|i| format!("n{i}.log")).collect::<Vec<_>>(),
        },
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(RunOutcome {
        dir: dir.to_path_buf(),
        valid,
        anomalies,
        vacuous,
        summary,
    })
}

/// Per shard group, the lowest applied index over its replicas, once every replica reports
/// the same (true) or the deadline passes (false).
async fn applied_indexes(cluster: &Cluster, deadline: Duration) -> (BTreeMap<u64, u64>, bool) {
    let until = Instant::now() + deadline;
    loop {
        let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for i in 0..cluster.len() {
            let Some(st) = cluster.status(i) else {
                continue;
            };
            for g in st["groups"].as_array().into_iter().flatten() {
                if let (Some(id), Some(applied)) =
                    (g["group_id"].as_u64(), g["applied_index"].as_u64())
                {
                    if id != 0 {
                        seen.entry(id).or_default().push(applied);
                    }
                }
            }
        }
        let converged = seen.values().all(|v| v.iter().min() == v.iter().max());
        if converged || Instant::now() > until {
            let lowest = seen
                .into_iter()
                .filter_map(|(id, v)| Some((id, *v.iter().min()?)))
                .collect();
            return (lowest, converged);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A client that knows every node, once the cluster answers DescribeCluster.
async fn discover(grpc: &[String], deadline: Duration) -> anyhow::Result<Client> {
    let until = Instant::now() + deadline;
    loop {
        match Client::discover(grpc, client_config()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > until => {
                return Err(anyhow::anyhow!("the cluster never answered: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_before_the_run() {
        let all = |_: &str| true;
        let none = |_: &str| false;
        let files = |_: &Path| true;
        let no_files = |_: &Path| false;
        assert!(missing_prerequisites(&[FaultKind::Clock], &all, &files).is_empty());
        // Without libfaketime, only a run with the clock nemesis needs it.
        assert!(missing_prerequisites(&[FaultKind::Kill], &all, &no_files).is_empty());
        let clock = missing_prerequisites(&[FaultKind::Kill, FaultKind::Clock], &all, &no_files);
        assert_eq!(clock.len(), 1);
        assert!(clock[0].contains("libfaketime"), "{clock:?}");
        let fuse = missing_prerequisites(&[FaultKind::PowerLoss], &all, &no_files);
        assert!(fuse.len() == 1 && fuse[0].contains("/dev/fuse"), "{fuse:?}");
        let tools = missing_prerequisites(&[], &none, &files);
        assert_eq!(tools.len(), 2, "{tools:?}");
    }
}
