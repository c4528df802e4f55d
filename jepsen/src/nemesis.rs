//! Nemeses: faults applied to the cluster on a schedule, each recorded in the history (start
//! and stop) with evidence that it took effect, and all healed before the final read.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace_client::open_shard_ranges;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::history::{Kind, Op};
use crate::net::{shapes, Grudge};
use crate::workload::Recorder;

/// The nemesis process id in the history.
pub const NEMESIS_PROCESS: u64 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Clock,
    /// Split or merge a shard of the stream being written (no heal: the new shape stays).
    Reshard,
    /// Cut the power of nodes: `kill -9`, and their disks forget what was not synced
    /// ([`crate::lazyfs`]); heal restarts them on what was durable.
    #[serde(rename = "power-loss")]
    PowerLoss,
    /// A bad network between nodes: random loss (iptables), and with `tc netem` delay and
    /// jitter, duplication, reordering or one slow one-way link. A kernel without netem gets
    /// loss only, and every such fault's evidence says netem was unavailable.
    Net,
    /// Stop a minority and damage their files (bit flips, truncations of segments and of the
    /// sled metadata, [`crate::corrupt`]); heal restarts them on the damaged files.
    Corrupt,
    /// Membership churn: a node dies and stays down past the dead-node timeout until its
    /// replicas are re-created elsewhere (heal restarts it), or a node is decommissioned and
    /// leaves (heal brings it back empty, joining as a new member, and replicas move onto it).
    Membership,
}

/// The nodes' `--dead-node-timeout` in runs with the membership nemesis (seconds).
pub const MEMBERSHIP_DEAD_NODE_TIMEOUT_S: u64 = 8;
/// How long a membership fault waits for the cluster to move the replicas (or for a
/// decommissioned node to leave) before it is judged not to have taken effect.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(150);

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "clock" => Ok(FaultKind::Clock),
            "reshard" => Ok(FaultKind::Reshard),
            "power-loss" => Ok(FaultKind::PowerLoss),
            "net" => Ok(FaultKind::Net),
            "corrupt" => Ok(FaultKind::Corrupt),
            "membership" => Ok(FaultKind::Membership),
            other => Err(format!(
                "unknown nemesis {other:?}; one of kill, pause, partition, clock, reshard, power-loss, net, corrupt, membership"
            )),
        }
    }
}

/// One fault, from start to heal: what the report shades and lists.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub action: String,
    pub start_s: f64,
    pub end_s: f64,
    /// The evidence says the fault took effect (and was healed).
    pub applied: bool,
    pub evidence: Value,
}

/// An active fault and how to undo it.
enum Undo {
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    Heal,
    /// Lossy links off and netem removed from these nodes; with `true`, a loss that dropped
    /// no packet did not take effect.
    NetHeal(Vec<usize>, bool),
    ClockReset(Vec<usize>),
    /// A node that left the cluster comes back with an empty data directory and joins.
    Rejoin(usize),
    Nothing,
}

struct Active {
    kind: FaultKind,
    action: String,
    start_s: f64,
    applied: bool,
    evidence: Value,
    undo: Undo,
}

/// Schedule settings.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kinds: Vec<FaultKind>,
    /// Quiet time between faults, and how long a fault holds (seconds, uniform).
    pub quiet_s: (f64, f64),
    pub hold_s: (f64, f64),
    pub seed: u64,
    /// Which nodes kill and pause may target: `one`, `shard-leader`, `minority`, `majority`,
    /// `all`. Empty: any.
    pub targets: Vec<String>,
    /// Which partitions: `halves`, `leader`, `zone`, `one-way`, `ring`. Empty: any.
    pub partitions: Vec<String>,
}

/// Target shapes of kill and pause.
pub const TARGETS: [&str; 5] = ["one", "shard-leader", "minority", "majority", "all"];
/// Partition shapes.
pub const PARTITIONS: [&str; 5] = ["halves", "leader", "zone", "one-way", "ring"];

/// Checks a list of shape names against the known ones.
pub fn check_shapes(names: &[String], known: &[&str], what: &str) -> Result<(), String> {
    match names.iter().find(|n| !known.contains(&n.as_str())) {
        Some(bad) => Err(format!(
            "unknown {what} {bad:?}; one of {}",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// A random shape among `allowed` (any of `known` when empty).
fn pick<'a>(rng: &mut StdRng, allowed: &'a [String], known: &'a [&'a str]) -> &'a str {
    if allowed.is_empty() {
        known.choose(rng).expect("shapes")
    } else {
        allowed.choose(rng).expect("shapes")
    }
}

/// The nodes a clock or corrupt fault acts on: a random minority (at least one) of the `live` nodes of a
/// cluster of `n`; `None` when no node is live (another fault took them all), so that no
/// fault without a target is started.
fn minority_of(mut live: Vec<usize>, n: usize, rng: &mut StdRng) -> Option<Vec<usize>> {
    if live.is_empty() {
        return None;
    }
    live.shuffle(rng);
    let count = rng.random_range(1..=((n - 1) / 2).max(1));
    live.truncate(count);
    live.sort();
    Some(live)
}

pub struct Nemesis {
    cluster: Cluster,
    /// For the reshard nemesis: the runtime to call the cluster's API on, and a client.
    admin: Option<(tokio::runtime::Handle, millrace_client::Client)>,
    targets: Vec<String>,
    partitions: Vec<String>,
    recorder: Arc<Recorder>,
    rng: StdRng,
    pub faults: Vec<Fault>,
    /// Whether the kernel has `tc netem`: probed at the first net fault (`Err`: why not).
    netem: Option<Result<(), String>>,
}

impl Nemesis {
    pub fn new(cluster: Cluster, recorder: Arc<Recorder>, schedule: &Schedule) -> Nemesis {
        let seed = schedule.seed;
        Nemesis {
            cluster,
            admin: None,
            targets: schedule.targets.clone(),
            partitions: schedule.partitions.clone(),
            recorder,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65),
            faults: Vec::new(),
            netem: None,
        }
    }

    /// Gives the reshard nemesis a client and the runtime to drive it on.
    pub fn with_admin(
        mut self,
        runtime: tokio::runtime::Handle,
        client: millrace_client::Client,
    ) -> Nemesis {
        self.admin = Some((runtime, client));
        self
    }

    /// The cluster back, with every fault applied.
    pub fn into_cluster_with_faults(self) -> (Cluster, Vec<Fault>) {
        (self.cluster, self.faults)
    }

    /// Applies faults until `stop`, then heals everything.
    pub fn run(&mut self, schedule: &Schedule, stop: &AtomicBool) {
        if schedule.kinds.is_empty() {
            return;
        }
        while !stop.load(Ordering::SeqCst) {
            let quiet = self
                .rng
                .random_range(schedule.quiet_s.0..=schedule.quiet_s.1);
            if sleep_unless(stop, quiet) {
                break;
            }
            // Now and then two kinds of fault at once.
            let mut kinds = vec![*schedule.kinds.choose(&mut self.rng).expect("kinds")];
            if schedule.kinds.len() > 1 && self.rng.random_bool(0.3) {
                let other = *schedule.kinds.choose(&mut self.rng).expect("kinds");
                if other != kinds[0] {
                    kinds.push(other);
                }
            }
            // A kind with no node left to act on (a concurrent kill took them all) is skipped
            // this round, not recorded as a fault that did not take effect.
            let active: Vec<Active> = kinds.into_iter().filter_map(|k| self.start(k)).collect();
            let hold = self.rng.random_range(schedule.hold_s.0..=schedule.hold_s.1);
            sleep_unless(stop, hold);
            for a in active.into_iter().rev() {
                self.stop(a);
            }
        }
    }

    fn now_s(&self) -> f64 {
        self.recorder.elapsed().as_secs_f64()
    }

    fn record(&self, kind: Kind, action: &str, evidence: Value) {
        self.recorder.record(
            NEMESIS_PROCESS,
            kind,
            Op::Nemesis {
                action: action.to_string(),
                evidence,
            },
        );
    }

    /// Nodes up and not paused.
    fn live(&self) -> Vec<usize> {
        (0..self.cluster.len())
            .filter(|i| self.cluster.running(*i) && !self.cluster.paused(*i))
            .collect()
    }

    /// Applies `act` to each node; evidence per node: its pid and what `act` reports under
    /// `field`; applied when every node's report satisfies `took`.
    fn on_each(
        &mut self,
        nodes: &[usize],
        field: &str,
        act: fn(&mut Cluster, usize) -> anyhow::Result<(u32, String)>,
        took: impl Fn(&str) -> bool,
    ) -> (bool, Value) {
        let mut ev = Vec::new();
        let mut applied = !nodes.is_empty();
        for &i in nodes {
            let name = self.cluster.name(i);
            match act(&mut self.cluster, i) {
                Ok((pid, report)) => {
                    applied &= took(&report);
                    ev.push(json!({"node": name, "pid": pid, field: report}));
                }
                Err(e) => {
                    applied = false;
                    ev.push(json!({"node": name, "error": e.to_string()}));
                }
            }
        }
        (applied, json!(ev))
    }

    /// The node leading the newest shard group (the highest group id: the stream the workload
    /// writes now), if any answers.
    fn a_shard_leader(&mut self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.live() {
            let Some(st) = self.cluster.status(i) else {
                continue;
            };
            for g in st["groups"].as_array().into_iter().flatten() {
                let id = g["group_id"].as_u64().unwrap_or(0);
                if id != 0 && g["state"] == "Leader" && best.is_none_or(|(b, _)| id > b) {
                    best = Some((id, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Targets for kill and pause: one node, a shard leader, a minority, a majority or all.
    fn targets(&mut self) -> (String, Vec<usize>) {
        let mut live = self.live();
        live.shuffle(&mut self.rng);
        let n = self.cluster.len();
        let allowed = self.targets.clone();
        let shape = pick(&mut self.rng, &allowed, &TARGETS).to_string();
        let count = match shape.as_str() {
            "shard-leader" => {
                if let Some(l) = self.a_shard_leader() {
                    return (shape, vec![l]);
                }
                1
            }
            "minority" => ((n - 1) / 2).max(1),
            "majority" => n / 2 + 1,
            "all" => n,
            _ => 1,
        };
        live.truncate(count.min(live.len()));
        live.sort();
        (shape, live)
    }

    fn names(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|i| self.cluster.name(*i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self, kind: FaultKind) -> Option<Active> {
        let start_s = self.now_s();
        let (action, applied, evidence, undo) = match kind {
            // A power cut is a kill whose node's disk then forgets what was not synced.
            FaultKind::Kill | FaultKind::PowerLoss => {
                let (shape, nodes) = self.targets();
                if nodes.is_empty() {
                    return None;
                }
                let (verb, act): (_, fn(&mut Cluster, usize) -> _) = if kind == FaultKind::Kill {
                    ("kill -9", Cluster::kill)
                } else {
                    ("power off", Cluster::power_off)
                };
                let action = format!("{verb} {} ({shape})", self.names(&nodes));
                self.record(Kind::Invoke, &action, Value::Null);
                let (applied, ev) =
                    self.on_each(&nodes, "exit", act, |exit| exit.contains("signal: 9"));
                (action, applied, ev, Undo::Restart(nodes))
            }
            FaultKind::Corrupt => {
                let live = self.live();
                let nodes = minority_of(live, self.cluster.len(), &mut self.rng)?;
                let action = format!("corrupt {}", self.names(&nodes));
                self.record(Kind::Invoke, &action, Value::Null);
                let mut ev = Vec::new();
                let mut applied = true;
                for &i in &nodes {
                    let name = self.cluster.name(i);
                    let exit = self.cluster.kill(i);
                    let damage = self.damage(i);
                    applied &= exit.is_ok() && damage.is_some();
                    ev.push(json!({
                        "node": name,
                        "exit": exit.map(|(_, e)| e).unwrap_or_else(|e| e.to_string()),
                        "damage": damage,
                    }));
                }
                (action, applied, json!(ev), Undo::Restart(nodes))
            }
            FaultKind::Net => {
                // As for partitions: with fewer than two nodes up no packet flows to lose, delay
                // or reorder, and the fault would be judged "did not take effect" (seen: nightly
                // run-08, a loss fault 40 ms after a kill of all nodes).
                if self.live().len() < 2 {
                    return None;
                }
                let (action, applied, ev, nodes) = self.bad_network();
                self.record(Kind::Invoke, &action, Value::Null);
                let loss = ev["shape"] == "loss";
                (action, applied, ev, Undo::NetHeal(nodes, loss))
            }
            FaultKind::Pause => {
                let (shape, nodes) = self.targets();
                if nodes.is_empty() {
                    return None;
                }
                let action = format!("SIGSTOP {} ({shape})", self.names(&nodes));
                self.record(Kind::Invoke, &action, Value::Null);
                let (applied, ev) =
                    self.on_each(&nodes, "state", Cluster::pause, |state| state == "T");
                (action, applied, ev, Undo::Resume(nodes))
            }
            FaultKind::Partition => {
                // With fewer than two nodes up (say, right after a kill of all of them) no
                // packet can be dropped: such a partition would be judged "did not take
                // effect" and make a valid run vacuous (seen: seed 32).
                if self.live().len() < 2 {
                    return None;
                }
                let (shape, grudge) = self.grudge();
                let action = format!("partition {shape}");
                self.record(Kind::Invoke, &action, Value::Null);
                let rules: Vec<Value> = grudge
                    .iter()
                    .map(|(i, from)| {
                        json!({"node": self.cluster.name(*i), "drops_from": self.names(&from.iter().copied().collect::<Vec<_>>())})
                    })
                    .collect();
                let result = self.cluster.net.partition(&grudge);
                let applied = result.is_ok() && !grudge.is_empty();
                let ev = json!({"rules": rules, "error": result.err().map(|e| e.to_string())});
                (action, applied, ev, Undo::Heal)
            }
            FaultKind::Reshard => {
                // A reshard needs the metadata group and the shard's group to commit: with no
                // majority up (say, a kill of all nodes drawn in the same round) it cannot take
                // effect, and would make a valid run vacuous (seen: seed 4242, rate 400).
                if self.live().len() <= self.cluster.len() / 2 {
                    return None;
                }
                let action = "reshard".to_string();
                self.record(Kind::Invoke, &action, Value::Null);
                let (action, applied, ev) = match self.reshard() {
                    Ok((what, ev)) => {
                        let ok = ev["applied"].as_bool().unwrap_or(false);
                        (format!("reshard: {what}"), ok, ev)
                    }
                    Err(e) => (action, false, json!({"error": e.to_string()})),
                };
                (action, applied, ev, Undo::Nothing)
            }
            FaultKind::Membership => {
                let (action, applied, ev, undo) = self.membership()?;
                (action, applied, ev, undo)
            }
            FaultKind::Clock => {
                let live = minority_of(self.live(), self.cluster.len(), &mut self.rng)?;
                let mut ev = Vec::new();
                let mut applied = true;
                let mut parts = Vec::new();
                for &i in &live {
                    let magnitude = self.rng.random_range(2..=300i64);
                    let offset = if self.rng.random_bool(0.5) {
                        magnitude
                    } else {
                        -magnitude
                    };
                    parts.push(format!("{}{offset:+}s", self.cluster.name(i)));
                    let _ = self.cluster.set_clock_offset(i, offset);
                    let seen = self.wait_clock(i, offset);
                    applied &= seen.is_some_and(|s| (s - offset).abs() <= 2);
                    ev.push(json!({"node": self.cluster.name(i), "offset_s": offset, "observed_offset_s": seen}));
                }
                let action = format!("clock {}", parts.join(" "));
                self.record(Kind::Invoke, &action, Value::Null);
                (action, applied, json!(ev), Undo::ClockReset(live))
            }
        };
        self.record(
            Kind::Info,
            &action,
            json!({"applied": applied, "evidence": evidence}),
        );
        Some(Active {
            kind,
            action,
            start_s,
            applied,
            evidence,
            undo,
        })
    }

    /// Damages one file of stopped node `i`, of a kind drawn at random among those its files
    /// allow; the evidence, or `None` when nothing could be damaged.
    fn damage(&mut self, i: usize) -> Option<Value> {
        let mut kinds = crate::corrupt::DAMAGE.to_vec();
        kinds.shuffle(&mut self.rng);
        let dir = self.cluster.data_dir(i).to_path_buf();
        kinds.into_iter().find_map(|kind| {
            crate::corrupt::damage(&dir, kind, &mut self.rng)
                .map(|r| r.unwrap_or_else(|e| json!({"damage": kind, "error": e.to_string()})))
        })
    }

    /// Starts a bad network on some nodes: its action, whether it took, evidence, the nodes.
    /// Loss needs iptables only; the other shapes need netem and are drawn only when the kernel
    /// has it (the evidence says when it has not).
    fn bad_network(&mut self) -> (String, bool, Value, Vec<usize>) {
        let netem = self
            .netem
            .get_or_insert_with(|| match self.cluster.net.netem_missing() {
                None => Ok(()),
                Some(why) => {
                    tracing::warn!(%why, "tc netem is unavailable: the net nemesis injects loss only");
                    Err(why)
                }
            })
            .clone();
        let (_, mut nodes) = self.targets();
        nodes.retain(|i| self.cluster.running(*i));
        if nodes.is_empty() {
            nodes = vec![self.rng.random_range(0..self.cluster.len())];
        }
        let shapes: &[&str] = if netem.is_ok() {
            &["loss", "delay", "duplicate", "reorder", "slow-one-way"]
        } else {
            &["loss"]
        };
        let shape = *shapes.choose(&mut self.rng).expect("shapes");
        let (params, result) = match shape {
            "loss" => {
                let percent = self.rng.random_range(5..=30u32);
                (
                    format!("{percent}% loss"),
                    self.cluster.net.lose(&nodes, percent),
                )
            }
            _ => {
                if shape == "slow-one-way" {
                    nodes.truncate(1);
                }
                let args: Vec<String> = match shape {
                    "delay" => {
                        let d = self.rng.random_range(20..=200u32);
                        vec!["delay".into(), format!("{d}ms"), format!("{}ms", d / 2)]
                    }
                    "duplicate" => vec![
                        "duplicate".into(),
                        format!("{}%", self.rng.random_range(5..=30u32)),
                    ],
                    "reorder" => vec![
                        "delay".into(),
                        "20ms".into(),
                        "reorder".into(),
                        format!("{}%", self.rng.random_range(10..=50u32)),
                        "50%".into(),
                    ],
                    _ => vec![
                        "delay".into(),
                        format!("{}ms", self.rng.random_range(300..=1000u32)),
                    ],
                };
                let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
                let result = nodes
                    .iter()
                    .try_for_each(|&i| self.cluster.net.netem(i, &args_ref));
                (args.join(" "), result)
            }
        };
        let action = format!("net {shape} ({params}) from {}", self.names(&nodes));
        let ev = json!({
            "shape": shape,
            "params": params,
            "nodes": self.names(&nodes),
            "netem": match &netem { Ok(()) => "available".to_string(), Err(why) => format!("unavailable: {why}") },
            "error": result.as_ref().err().map(|e| e.to_string()),
        });
        (action, result.is_ok(), ev, nodes)
    }

    /// Once the newest workload stream is ACTIVE (within 90 s), splits a random open shard of it at the
    /// middle of its hash range, or merges two adjacent open shards; waits until the stream is ACTIVE again.
    /// Evidence: the open shards before and after.
    fn reshard(&mut self) -> anyhow::Result<(String, Value)> {
        let (rt, client) = self
            .admin
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the reshard nemesis has no client"))?;
        let merge = self.rng.random_bool(0.4);
        let pick: u64 = self.rng.random();
        rt.block_on(async move {
            let streams = client.list_streams().await?;
            let stream = streams
                .iter()
                .filter_map(|s| Some((s.strip_prefix("jepsen-")?.parse::<u64>().ok()?, s)))
                .max()
                .map(|(_, s)| s.clone())
                .ok_or_else(|| anyhow::anyhow!("no workload stream"))?;
            // The workload rotates to new streams (quickly at high rates): the newest may still
            // be Creating, and a reshard of it would be refused (seen: nightly run-02, rate 400).
            // A stream created while a node is dead can take a minute: a group first placed on
            // that node is initialized by its next replica after 30 s per position.
            client
                .wait_for_active(&stream, Duration::from_secs(90))
                .await?;
            let before = open_shard_ranges(client.list_shards(&stream).await?);
            anyhow::ensure!(!before.is_empty(), "{stream} has no open shard");
            let adjacent: Vec<usize> = (0..before.len().saturating_sub(1))
                .filter(|i| before[*i].1.checked_add(1) == Some(before[i + 1].0))
                .collect();
            let what = if merge && !adjacent.is_empty() {
                let i = adjacent[(pick as usize) % adjacent.len()];
                client
                    .merge_shards(&stream, &before[i].2, &before[i + 1].2)
                    .await?;
                format!("merge {stream} {} + {}", before[i].2, before[i + 1].2)
            } else {
                let (lo, hi, id) = &before[(pick as usize) % before.len()];
                let middle = lo + (hi - lo) / 2 + 1;
                client.split_shard(&stream, id, &middle.to_string()).await?;
                format!("split {stream} {id} at {middle}")
            };
            client
                .wait_for_active(&stream, Duration::from_secs(30))
                .await?;
            let after = open_shard_ranges(client.list_shards(&stream).await?);
            let names = |v: &[(u128, u128, String)]| -> Vec<String> {
                v.iter().map(|(_, _, id)| id.clone()).collect()
            };
            let applied = names(&before) != names(&after);
            Ok((
                what,
                json!({"open_before": names(&before), "open_after": names(&after), "applied": applied}),
            ))
        })
    }

    /// Starts a membership change on a node that holds replicas, with every node up (it
    /// needs room to move them: `None` otherwise). Half the time the node dies past the
    /// dead-node timeout, half the time it is decommissioned; either way the fault waits
    /// until the cluster has moved its replicas away. Evidence: the node's replica count
    /// before and after, as the metadata leader reports it.
    fn membership(&mut self) -> Option<(String, bool, Value, Undo)> {
        let n = self.cluster.len();
        if n < 4 || self.live().len() < n {
            return None;
        }
        let status = (0..n).find_map(|i| self.cluster.cluster_status(i))?;
        let mut holders: Vec<usize> = (0..n)
            .filter(|i| replicas_on(&status, self.cluster.node_id(*i)).unwrap_or(0) > 0)
            .collect();
        holders.shuffle(&mut self.rng);
        let x = *holders.first()?;
        let (name, id) = (self.cluster.name(x), self.cluster.node_id(x));
        let before = replicas_on(&status, id);
        let started = std::time::Instant::now();
        if self.rng.random_bool(0.5) {
            let action = format!("membership: {name} dies past the dead-node timeout");
            self.record(Kind::Invoke, &action, Value::Null);
            let exit = self.cluster.kill(x).map(|(_, e)| e);
            let after = self.wait_replicas(x, |count| count == Some(0));
            let applied = exit.is_ok() && after == Some(0);
            // What still holds the node's replicas, when some were not moved.
            let left: Vec<Value> = match after {
                Some(0) => Vec::new(),
                _ => self
                    .live()
                    .into_iter()
                    .find_map(|j| self.cluster.cluster_status(j))
                    .map(|s| {
                        ["under_replicated", "moving", "catching_up", "repairing"]
                            .iter()
                            .flat_map(|list| {
                                s[*list]
                                    .as_array()
                                    .cloned()
                                    .unwrap_or_default()
                                    .into_iter()
                                    .map(move |e| json!({"list": list, "entry": e}))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let ev = json!({
                "not_moved": left,
                "node": name,
                "exit": exit.unwrap_or_else(|e| e.to_string()),
                "replicas_before": before,
                "replicas_after": after,
                "waited_s": started.elapsed().as_secs_f64(),
            });
            Some((action, applied, ev, Undo::Restart(vec![x])))
        } else {
            let action = format!("membership: decommission {name}, which then rejoins empty");
            self.record(Kind::Invoke, &action, Value::Null);
            let asked = match &self.admin {
                Some((rt, client)) => rt
                    .block_on(client.decommission_node(id))
                    .map_err(|e| e.to_string()),
                None => Err("the membership nemesis has no client".into()),
            };
            let exit = match asked {
                Ok(()) => self
                    .cluster
                    .wait_exit(x, MEMBERSHIP_WAIT)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            // Gone from the members once it left (asked of the nodes still in the cluster).
            let gone =
                matches!(exit, Ok(Some(_))) && self.wait_replicas(x, |c| c.is_none()).is_none();
            let ev = json!({
                "node": name,
                "decommissioned": exit.as_ref().map(|e| e.is_some()).unwrap_or(false),
                "exit": match &exit { Ok(Some(e)) => e.clone(), Ok(None) => format!("still running after {MEMBERSHIP_WAIT:?}"), Err(e) => e.clone() },
                "replicas_before": before,
                "left_the_members": gone,
                "waited_s": started.elapsed().as_secs_f64(),
            });
            let applied = gone && matches!(&exit, Ok(Some(e)) if e.contains("exit status: 0"));
            Some((action, applied, ev, Undo::Rejoin(x)))
        }
    }

    /// Polls the cluster status (asked of the live nodes) until `done` accepts node `i`'s
    /// replica count (`None`: not a member), or [`MEMBERSHIP_WAIT`] passes; the last count.
    fn wait_replicas(&self, i: usize, done: impl Fn(Option<u64>) -> bool) -> Option<u64> {
        let id = self.cluster.node_id(i);
        let until = std::time::Instant::now() + MEMBERSHIP_WAIT;
        let mut last = None;
        loop {
            if let Some(status) = self
                .live()
                .into_iter()
                .find_map(|j| self.cluster.cluster_status(j))
            {
                last = replicas_on(&status, id);
                if done(last) {
                    return last;
                }
            }
            if std::time::Instant::now() > until {
                return last;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Brings back node `i` after it left: its data directory emptied, joining through a live
    /// member; healed once the metadata lists it as up again.
    fn rejoin(&mut self, i: usize) -> (bool, Value) {
        let name = self.cluster.name(i);
        if self.cluster.running(i) {
            // It never left (the decommission did not finish): it keeps its data.
            return (
                false,
                json!({"node": name, "rejoined": false, "why": "still running"}),
            );
        }
        let Some(seed) = self.live().first().map(|j| self.cluster.grpc_addr(*j)) else {
            return (
                false,
                json!({"node": name, "rejoined": false, "why": "no live node to join through"}),
            );
        };
        let started = self
            .cluster
            .wipe_to_join(i, seed.clone())
            .and_then(|()| self.cluster.spawn(i));
        let member = started.is_ok() && {
            let id = self.cluster.node_id(i);
            let until = std::time::Instant::now() + MEMBERSHIP_WAIT;
            loop {
                let up = self
                    .live()
                    .into_iter()
                    .find_map(|j| self.cluster.cluster_status(j))
                    .is_some_and(|s| {
                        s["nodes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|m| m["node_id"] == id && m["up"] == true)
                    });
                if up || std::time::Instant::now() > until {
                    break up;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        };
        (
            member,
            json!({
                "node": name,
                "joined_through": seed,
                "pid": started.as_ref().ok(),
                "error": started.err().map(|e| e.to_string()),
                "member_again": member,
            }),
        )
    }

    /// The node's observed clock offset once it is within two seconds of `want` (or the last
    /// seen after five seconds): libfaketime re-reads its file about once a second.
    fn wait_clock(&self, i: usize, want: i64) -> Option<i64> {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.cluster.observed_clock_offset(i);
            if seen.is_some_and(|s| (s - want).abs() <= 2) || std::time::Instant::now() > until {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A partition shape: random halves, the leader of a shard alone, a zone alone, one-way,
    /// or the majorities ring.
    fn grudge(&mut self) -> (String, Grudge) {
        let n = self.cluster.len();
        let mut all: Vec<usize> = (0..n).collect();
        let allowed = self.partitions.clone();
        let mut shape = pick(&mut self.rng, &allowed, &PARTITIONS).to_string();
        if shape == "ring" && n < 5 {
            // Fewer than five nodes make no ring of distinct majorities.
            shape = "one-way".into();
        }
        match shape.as_str() {
            "halves" => {
                all.shuffle(&mut self.rng);
                let (a, b) = all.split_at(n / 2);
                (
                    format!("halves {} | {}", self.names(a), self.names(b)),
                    shapes::split(a, b),
                )
            }
            "leader" => {
                let l = self.a_shard_leader().unwrap_or(0);
                let rest: Vec<usize> = all.iter().copied().filter(|i| *i != l).collect();
                (
                    format!("isolate shard leader {}", self.cluster.name(l)),
                    shapes::split(&[l], &rest),
                )
            }
            "zone" => {
                let zones: BTreeSet<String> =
                    (0..n).map(|i| self.cluster.zone(i).to_string()).collect();
                let zones: Vec<String> = zones.into_iter().collect();
                let zone = zones.choose(&mut self.rng).expect("a zone").clone();
                let (a, b): (Vec<usize>, Vec<usize>) =
                    all.iter().partition(|i| self.cluster.zone(**i) == zone);
                (
                    format!("isolate zone {zone} ({})", self.names(&a)),
                    shapes::split(&a, &b),
                )
            }
            "one-way" => {
                all.shuffle(&mut self.rng);
                let (a, b) = all.split_at(1);
                (
                    format!(
                        "one-way: {} hears nobody, the rest still hear it",
                        self.names(a)
                    ),
                    shapes::one_way(a, b),
                )
            }
            _ => ("majorities ring".into(), shapes::ring(n)),
        }
    }

    fn stop(&mut self, a: Active) {
        let action = format!("heal: {}", a.action);
        self.record(Kind::Invoke, &action, Value::Null);
        let (healed, ev) = match &a.undo {
            Undo::Restart(nodes) => {
                let mut ev = Vec::new();
                let mut ok = true;
                for &i in nodes {
                    match self.cluster.spawn(i) {
                        Ok(pid) => ev.push(json!({"node": self.cluster.name(i), "pid": pid})),
                        Err(e) => {
                            ok = false;
                            ev.push(json!({"node": self.cluster.name(i), "error": e.to_string()}))
                        }
                    }
                }
                let ready = self.cluster.wait_ready(Duration::from_secs(30));
                ok &= ready.is_ok();
                (ok, json!({"restarted": ev, "ready": ready.is_ok()}))
            }
            Undo::Resume(nodes) => {
                let nodes = nodes.clone();
                self.on_each(&nodes, "state", Cluster::resume, |state| state != "T")
            }
            Undo::Heal => {
                let dropped = self.cluster.net.dropped_packets();
                let total: u64 = dropped.iter().sum();
                let healed = self.cluster.net.heal();
                // The cut bit only if packets were actually dropped.
                (
                    healed.is_ok() && total > 0,
                    json!({"dropped_packets": dropped, "healed": healed.is_ok()}),
                )
            }
            Undo::NetHeal(nodes, loss) => {
                let lost = self.cluster.net.lost_packets();
                let healed = self.cluster.net.heal_loss();
                for &i in nodes {
                    self.cluster.net.heal_netem(i);
                }
                let took = !*loss || lost.iter().sum::<u64>() > 0;
                (
                    healed.is_ok() && took,
                    json!({"lost_packets": lost, "healed": healed.is_ok()}),
                )
            }
            Undo::Nothing => (true, Value::Null),
            Undo::Rejoin(i) => self.rejoin(*i),
            Undo::ClockReset(nodes) => {
                let mut ev = Vec::new();
                let mut ok = true;
                for &i in nodes {
                    let _ = self.cluster.set_clock_offset(i, 0);
                    let seen = self.wait_clock(i, 0);
                    ok &= seen.is_some_and(|s| s.abs() <= 2);
                    ev.push(json!({"node": self.cluster.name(i), "observed_offset_s": seen}));
                }
                (ok, json!(ev))
            }
        };
        self.record(
            Kind::Info,
            &action,
            json!({"healed": healed, "evidence": ev}),
        );
        self.faults.push(Fault {
            kind: a.kind,
            action: a.action,
            start_s: a.start_s,
            end_s: self.now_s(),
            applied: a.applied && healed,
            evidence: json!({"start": a.evidence, "stop": ev}),
        });
    }

    /// Heals whatever is left: every node running and resumed, the network whole, clocks true.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.record(Kind::Invoke, "heal all", Value::Null);
        self.cluster.net.heal()?;
        self.cluster.net.heal_loss()?;
        for i in 0..self.cluster.len() {
            self.cluster.net.heal_netem(i);
        }
        for i in 0..self.cluster.len() {
            if self.cluster.paused(i) {
                self.cluster.resume(i)?;
            }
            if !self.cluster.running(i) {
                self.cluster.spawn(i)?;
            }
            self.cluster.set_clock_offset(i, 0)?;
        }
        self.cluster.wait_ready(Duration::from_secs(60))?;
        self.record(Kind::Info, "heal all", json!({"healed": true}));
        Ok(())
    }
}

/// How many shard replicas the cluster status places on node `id` (`None`: not a member).
fn replicas_on(status: &Value, id: u64) -> Option<u64> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == id)
        .map(|m| m["shards"].as_u64().unwrap_or(0))
}

/// Sleeps `secs` unless `stop` is raised first; true if it was.
fn sleep_unless(stop: &AtomicBool, secs: f64) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
    while std::time::Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_fault_always_has_a_live_target() {
        let mut rng = StdRng::seed_from_u64(77);
        // Seen: `--nodes 3 --nemesis clock,kill --seed 77` drew "clock " with no node when a
        // kill had taken every node.
        assert_eq!(minority_of(Vec::new(), 3, &mut rng), None);
        for _ in 0..100 {
            let skewed = minority_of(vec![0, 2, 4], 5, &mut rng).expect("targets");
            assert!((1..=2).contains(&skewed.len()), "{skewed:?}");
            assert!(skewed.iter().all(|i| [0, 2, 4].contains(i)));
        }
        assert_eq!(minority_of(vec![1], 3, &mut rng), Some(vec![1]));
    }
}
