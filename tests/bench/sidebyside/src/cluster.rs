//! Starting and stopping the two 3-node clusters on 127.0.0.1, and reading their CPU time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Three server processes of one system; killed (SIGKILL) when dropped.
pub struct Cluster {
    pub name: &'static str,
    children: Vec<Child>,
    pub endpoints: Vec<String>,
}

impl Cluster {
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// User + system CPU seconds used so far by the three servers (from /proc).
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().iter().map(|p| process_cpu_seconds(*p)).sum()
    }

    /// Resident memory of the three servers, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.pids()
            .iter()
            .filter_map(|p| {
                let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .sum::<f64>()
            / 1024.0
    }

    /// Fails when a server has exited (a crashed server makes every figure meaningless).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for c in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!("{} server pid {} exited: {status}", self.name, c.id());
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(dir.join(name))?;
    Ok((f.try_clone()?.into(), f.into()))
}

/// A 3-node NATS JetStream cluster: every server fsyncs every write (`sync_interval: always`).
pub fn start_nats(bin: &Path, dir: &Path) -> anyhow::Result<Cluster> {
    let routes: Vec<String> = (1..=3)
        .map(|i| format!("nats://127.0.0.1:{}", 6300 + i))
        .collect();
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    for i in 1..=3 {
        let node_dir = dir.join(format!("nats-{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let config = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
             cluster {{\n  name: bench\n  listen: 127.0.0.1:{cport}\n  routes: [{routes}]\n}}\n",
            port = 4300 + i,
            store = node_dir.join("store").display(),
            cport = 6300 + i,
            routes = routes.join(", "),
        );
        let config_path = node_dir.join("nats.conf");
        std::fs::write(&config_path, config)?;
        let (out, err) = log_file(&node_dir, "server.log")?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.push(child);
        endpoints.push(format!("127.0.0.1:{}", 4300 + i));
    }
    Ok(Cluster {
        name: "nats",
        children,
        endpoints,
    })
}

/// A 3-node Millrace cluster (`millrace serve`, zones a/b/c, replication factor 3).
pub fn start_millrace(bin: &Path, dir: &Path) -> anyhow::Result<Cluster> {
    let grpc = |i: u16| format!("127.0.0.1:{}", 7300 + i);
    let peers: Vec<String> = (1..=3).map(|i| format!("{i}={}", grpc(i))).collect();
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    for i in 1..=3u16 {
        let node_dir = dir.join(format!("millrace-{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let (out, err) = log_file(&node_dir, "node.log")?;
        let child = Command::new(bin)
            .arg("serve")
            // NATS runs without TLS beside it: compare like with like.
            .arg("--plaintext")
            .args(["--node-id", &i.to_string()])
            .arg("--data-dir")
            .arg(node_dir.join("data"))
            .args(["--grpc-addr", &grpc(i)])
            .args(["--http-addr", &format!("127.0.0.1:{}", 4700 + i)])
            .args(["--zone", &((b'a' + i as u8 - 1) as char).to_string()])
            .args(["--peers", &peers.join(",")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.push(child);
        endpoints.push(format!("http://{}", grpc(i)));
    }
    Ok(Cluster {
        name: "millrace",
        children,
        endpoints,
    })
}

/// Retries `f` until it succeeds or `within` passes.
pub async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not done within {within:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A fresh directory for one round's data, on the disk under test (never a tmpfs).
pub fn round_dir(base: &Path, round: usize, system: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("round-{round}-{system}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
