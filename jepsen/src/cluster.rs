//! The cluster under test: real `millrace serve` processes, one per network namespace, that
//! the nemeses kill, pause, restart and skew the clocks of.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::lazyfs::Mounted;
use crate::net::Net;

/// libfaketime (Debian `libfaketime`): fakes the wall clock of a node from a file it re-reads.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub const GRPC_PORT: u16 = 7101;
pub const HTTP_PORT: u16 = 4567;

/// How nodes are started.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub nodes: usize,
    /// Start nodes under libfaketime so the clock nemesis can skew them.
    pub faketime: bool,
    /// A calibration bug every node injects (`--calibration-inject-bug-unsafe`).
    pub inject_bug: Option<String>,
    /// Each node's data directory is a [`crate::lazyfs`] mount (for the power-loss nemesis):
    /// what a node has not synced is lost when its power is cut.
    pub lazy_fs: bool,
    /// `--dead-node-timeout` of every node: how long a node may stay silent before the
    /// cluster re-creates its replicas elsewhere (short for the membership nemesis).
    pub dead_node_timeout: String,
}

struct NodeProc {
    id: u64,
    zone: String,
    data_dir: PathBuf,
    log: PathBuf,
    clock_file: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// The lazy filesystem holding `data_dir`, when the run cuts power.
    disk: Option<Mounted>,
    /// Set once the node left the cluster and comes back empty: it joins through this node
    /// (`host:port`) instead of starting as one of the initial peers.
    join: Option<String>,
}

pub struct Cluster {
    pub net: Net,
    config: ClusterConfig,
    nodes: Vec<NodeProc>,
}

/// Zones: nodes spread round-robin over three (or fewer when there are fewer nodes).
fn zone_of(i: usize, n: usize) -> String {
    format!("z{}", i % n.min(3) + 1)
}

impl Cluster {
    /// Creates the network and starts every node.
    pub fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        let net = Net::create(config.nodes)?;
        std::fs::create_dir_all(&config.dir)?;
        let nodes = (0..config.nodes)
            .map(|i| NodeProc {
                id: i as u64 + 1,
                zone: zone_of(i, config.nodes),
                data_dir: config.dir.join(format!("n{}", i + 1)),
                log: config.dir.join(format!("n{}.log", i + 1)),
                clock_file: config.dir.join(format!("n{}.faketime", i + 1)),
                child: None,
                paused: false,
                disk: None,
                join: None,
            })
            .collect();
        let mut cluster = Cluster { net, config, nodes };
        if cluster.config.lazy_fs {
            for node in &mut cluster.nodes {
                node.disk = Some(Mounted::mount(
                    &durable_dir(&node.data_dir),
                    &node.data_dir,
                )?);
            }
        }
        for i in 0..cluster.nodes.len() {
            cluster.set_clock_offset(i, 0)?;
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn name(&self, i: usize) -> String {
        format!("n{}", self.nodes[i].id)
    }

    pub fn zone(&self, i: usize) -> &str {
        &self.nodes[i].zone
    }

    pub fn grpc_url(&self, i: usize) -> String {
        format!("http://{}:{GRPC_PORT}", self.net.hosts[i].ip)
    }

    pub fn http_addr(&self, i: usize) -> String {
        format!("{}:{HTTP_PORT}", self.net.hosts[i].ip)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    fn peers(&self) -> String {
        self.net
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{}={}:{GRPC_PORT}", i + 1, h.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` (again): the same data directory, a new process.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<u32> {
        if self.nodes[i].child.is_some() {
            bail!("{} is already running", self.name(i));
        }
        let peers = self.peers();
        let host = self.net.hosts[i].clone();
        let node = &self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns])
            .arg(&self.config.binary)
            .arg("serve")
            // The namespaces' private network; the harness checks data, not transport security.
            .arg("--plaintext")
            .args(["--node-id", &node.id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--grpc-addr", &format!("{}:{GRPC_PORT}", host.ip)])
            .args(["--http-addr", &format!("{}:{HTTP_PORT}", host.ip)])
            .args(["--zone", &node.zone])
            .args(match &node.join {
                Some(seed) => ["--join", seed.as_str()],
                None => ["--peers", peers.as_str()],
            })
            .args(["--dead-node-timeout", &self.config.dead_node_timeout])
            // Retention marks, snapshots and purges every few seconds (not every minute), so
            // that restarts from a purged log happen within a run.
            .args(["--retention-check-interval-ms", "5000"])
            .env(
                "MILLRACE_LOG",
                "info,openraft=warn,h2=warn,tower=warn,hyper=warn",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(bug) = &self.config.inject_bug {
            cmd.args(["--calibration-inject-bug-unsafe", bug]);
        }
        if self.config.faketime {
            // Only the wall clock is faked, as a stepped system clock would be: monotonic
            // time (timers, Raft elections) keeps running true.
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", &node.clock_file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.name(i)))?;
        let pid = child.id();
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(pid)
    }

    /// `kill -9`: returns the pid and how it ended (evidence).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<(u32, String)> {
        let Some(mut child) = self.nodes[i].child.take() else {
            bail!("{} is not running", self.name(i));
        };
        let pid = child.id();
        signal(pid, libc::SIGKILL)?;
        if self.nodes[i].paused {
            let _ = signal(pid, libc::SIGCONT);
        }
        self.nodes[i].paused = false;
        let status = child.wait()?;
        Ok((pid, format!("{status}")))
    }

    /// A power cut: `kill -9`, then the node's disk forgets every write it had not synced.
    /// Returns the pid and how it ended, with what was lost (evidence).
    pub fn power_off(&mut self, i: usize) -> anyhow::Result<(u32, String)> {
        if self.nodes[i].disk.is_none() {
            bail!(
                "{} has no lazy disk (the run was started without power-loss)",
                self.name(i)
            );
        }
        let (pid, exit) = self.kill(i)?;
        let lost = self.nodes[i]
            .disk
            .as_ref()
            .expect("checked")
            .fs
            .lose_unsynced();
        Ok((
            pid,
            format!(
                "{exit}; lost {} unsynced pages in {} files",
                lost.pages, lost.files
            ),
        ))
    }

    /// Waits up to `timeout` for node `i` to exit on its own (a decommissioned node leaves);
    /// how it ended, or `None` if it is still running.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<Option<String>> {
        let until = Instant::now() + timeout;
        let node = &mut self.nodes[i];
        let child = node.child.as_mut().context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                node.child = None;
                node.paused = false;
                return Ok(Some(format!("{status}")));
            }
            if Instant::now() > until {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Empties stopped node `i`'s data directory (a node that left comes back as new), and
    /// makes it join through `seed` (`host:port` of a member) when it next starts.
    pub fn wipe_to_join(&mut self, i: usize, seed: String) -> anyhow::Result<()> {
        if self.running(i) {
            bail!(
                "{} is running: only a stopped node's data is wiped",
                self.name(i)
            );
        }
        let dir = &self.nodes[i].data_dir;
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
        self.nodes[i].join = Some(seed);
        Ok(())
    }

    /// The gRPC address (`host:port`) node `i` serves on, as `--join` takes it.
    pub fn grpc_addr(&self, i: usize) -> String {
        format!("{}:{GRPC_PORT}", self.net.hosts[i].ip)
    }

    /// Node `i`'s id in the cluster.
    pub fn node_id(&self, i: usize) -> u64 {
        self.nodes[i].id
    }

    /// The cluster status as the metadata leader sees it, asked of node `i`.
    pub fn cluster_status(&self, i: usize) -> Option<serde_json::Value> {
        let (_, body) = http_get(&self.http_addr(i), "/v1/cluster/status")?;
        serde_json::from_str(&body).ok()
    }

    /// SIGSTOP; returns the pid and the process state read back from /proc (evidence).
    pub fn pause(&mut self, i: usize) -> anyhow::Result<(u32, String)> {
        let pid = self.pid(i).context("not running")?;
        signal(pid, libc::SIGSTOP)?;
        self.nodes[i].paused = true;
        Ok((pid, wait_state(pid, |s| s == "T")))
    }

    /// SIGCONT; returns the pid and the process state read back.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<(u32, String)> {
        let pid = self.pid(i).context("not running")?;
        signal(pid, libc::SIGCONT)?;
        self.nodes[i].paused = false;
        Ok((pid, wait_state(pid, |s| s != "T")))
    }

    /// Sets node `i`'s wall clock `seconds` off true time (libfaketime re-reads the file).
    pub fn set_clock_offset(&self, i: usize, seconds: i64) -> anyhow::Result<()> {
        let spec = if seconds >= 0 {
            format!("+{seconds}\n")
        } else {
            format!("{seconds}\n")
        };
        let path = &self.nodes[i].clock_file;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, spec)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The node's wall clock minus true time, in seconds, from the `wall_clock_ms` of its
    /// status page (evidence that a clock fault took effect).
    pub fn observed_clock_offset(&self, i: usize) -> Option<i64> {
        let before = unix_ms();
        let theirs = self.status(i)?["wall_clock_ms"].as_i64()?;
        let after = unix_ms();
        Some(((theirs - (before + after) / 2) as f64 / 1000.0).round() as i64)
    }

    /// Node `i`'s `/v1/node/status` JSON, if it answers within a second.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (_, body) = http_get(&self.http_addr(i), "/v1/node/status")?;
        serde_json::from_str(&body).ok()
    }

    /// Waits until every running, unpaused node answers its status page.
    pub fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        for i in 0..self.nodes.len() {
            if !self.running(i) || self.paused(i) {
                continue;
            }
            while self.status(i).is_none() {
                if Instant::now() > until {
                    bail!("{} did not answer within {deadline:?}", self.name(i));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Stops every node (SIGCONT first where paused). A lazy disk is then synced (a killed
    /// process leaves its page cache behind) and unmounted, and its durable directory takes
    /// the data directory's place, for the replica comparison and `--keep-data`.
    pub fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            if self.running(i) {
                let _ = self.kill(i);
            }
        }
        for node in &mut self.nodes {
            if let Some(mut disk) = node.disk.take() {
                disk.unmount();
                let durable = durable_dir(&node.data_dir);
                let moved = std::fs::remove_dir(&node.data_dir)
                    .and_then(|()| std::fs::rename(&durable, &node.data_dir));
                if let Err(e) = moved {
                    tracing::warn!(dir = %node.data_dir.display(), error = %e, "moving a lazy disk's durable directory into place");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a lazy disk keeps what was synced: beside the data directory it is mounted on.
fn durable_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".durable");
    data_dir.with_file_name(name)
}

fn signal(pid: u32, sig: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid this harness spawned and still owns (not yet reaped).
    let rc = unsafe { libc::kill(pid as i32, sig) };
    if rc != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The state letter of `/proc/PID/stat`, once `ok` accepts it or after a second.
fn wait_state(pid: u32, ok: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.trim_start().to_string();
                after.split_whitespace().next().map(str::to_string)
            })
            .unwrap_or_else(|| "?".into());
        if ok(&state) || Instant::now() > until {
            return state;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A blocking HTTP/1.1 GET with a one-second deadline: (head, body).
fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some((head.to_string(), body.to_string()))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_spread_round_robin() {
        let zones: Vec<String> = (0..5).map(|i| zone_of(i, 5)).collect();
        assert_eq!(zones, ["z1", "z2", "z3", "z1", "z2"]);
    }
}
