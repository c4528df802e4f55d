//! `millrace dev`: a local cluster of N `serve` processes on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

pub const DEV_GRPC_PORT_BASE: u16 = 7100;
pub const DEV_HTTP_PORT_BASE: u16 = 4566;
/// Zones a, b, c, … (wrapping after z).
pub fn dev_zone(i: usize) -> String {
    ((b'a' + ((i - 1) % 26) as u8) as char).to_string()
}

pub async fn run(nodes: usize, data_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    let exe = std::env::current_exe().context("locating the millrace binary")?;
    let peers: Vec<String> = (1..=nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", DEV_GRPC_PORT_BASE + i as u16))
        .collect();
    let peers = peers.join(",");
    let mut children: Vec<(usize, Child)> = Vec::new();
    for i in 1..=nodes {
        let dir: PathBuf = data_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let child = Command::new(&exe)
            .arg("serve")
            .args(["--node-id", &i.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{}", DEV_GRPC_PORT_BASE + i as u16),
            ])
            .args([
                "--http-addr",
                &format!("127.0.0.1:{}", DEV_HTTP_PORT_BASE + i as u16),
            ])
            .args(["--zone", &dev_zone(i)])
            .args(["--peers", &peers])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting a node")?;
        let pid = child.id().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        writeln!(
            out,
            "node {i}: pid {pid}  grpc http://127.0.0.1:{}  http http://127.0.0.1:{}  zone {}  log {}",
            DEV_GRPC_PORT_BASE + i as u16,
            DEV_HTTP_PORT_BASE + i as u16,
            dev_zone(i),
            dir.join("node.log").display()
        )?;
        children.push((i, child));
    }
    let endpoints: Vec<String> = (1..=nodes)
        .map(|i| format!("http://127.0.0.1:{}", DEV_GRPC_PORT_BASE + i as u16))
        .collect();
    println!("MILLRACE_ENDPOINT={}", endpoints.join(","));
    println!("Ctrl-C stops the cluster; run again with the same --data-dir to resume it.");

    let mut waits = Vec::new();
    for (i, mut child) in children {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        waits.push(tx);
        tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(node = i, ?status, "node exited; dev does not restart it");
                }
                _ = rx => {
                    if let Some(pid) = child.id() {
                        // SIGTERM for a graceful stop, then wait for it.
                        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
                    }
                    let _ = child.wait().await;
                }
            }
        });
    }
    tokio::signal::ctrl_c().await?;
    println!("stopping the cluster");
    for w in waits {
        let _ = w.send(());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    Ok(())
}
