//! `millrace dev`: a local cluster of N `serve` processes on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

pub const DEV_GRPC_PORT_BASE: u16 = 7100;
pub const DEV_HTTP_PORT_BASE: u16 = 4566;
/// How long `dev` waits for its nodes to stop gracefully when it is stopped.
const DEV_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Zones a, b, c, … (wrapping after z).
pub fn dev_zone(i: usize) -> String {
    ((b'a' + ((i - 1) % 26) as u8) as char).to_string()
}

/// The files `millrace dev --tls` made (kept in the data dir, reused by the next run).
struct DevTls {
    ca: PathBuf,
    nodes: Vec<(u64, PathBuf, PathBuf)>,
}

/// A throwaway CA and a certificate per node in `data_dir/tls`, made once: a later run with
/// the same data dir reuses them, so clients keep trusting the same CA.
fn dev_tls(data_dir: &Path, nodes: usize) -> anyhow::Result<DevTls> {
    let dir = data_dir.join("tls");
    let ids: Vec<u64> = (1..=nodes as u64).collect();
    let ca = dir.join("ca.pem");
    let files: Vec<(u64, PathBuf, PathBuf)> = ids
        .iter()
        .map(|&i| {
            (
                i,
                dir.join(format!("node-{i}.pem")),
                dir.join(format!("node-{i}.key")),
            )
        })
        .collect();
    let all_there = ca.exists() && files.iter().all(|(_, c, k)| c.exists() && k.exists());
    if all_there {
        return Ok(DevTls { ca, nodes: files });
    }
    let written = millrace_security::dev_pki::DevPki::generate(&ids)?.write(&dir)?;
    Ok(DevTls {
        ca: written.ca,
        nodes: written.nodes,
    })
}

pub async fn run(nodes: usize, data_dir: &Path, tls: bool) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    let exe = std::env::current_exe().context("locating the millrace binary")?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = &data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    // Even a plaintext dev cluster signs its internal requests: nobody else on the machine
    // can send its nodes Raft messages.
    let secret = data_dir.join("cluster-secret");
    millrace_security::peer_auth::ClusterSecret::create_file(&secret)?;
    let tls = if tls {
        Some(dev_tls(data_dir, nodes)?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let peers: Vec<String> = (1..=nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", DEV_GRPC_PORT_BASE + i as u16))
        .collect();
    let peers = peers.join(",");
    let mut children: Vec<(usize, Child)> = Vec::new();
    for i in 1..=nodes {
        let dir: PathBuf = data_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .arg("--cluster-secret-file")
            .arg(&secret);
        if let Some(tls) = &tls {
            let (_, cert, key) = &tls.nodes[i - 1];
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--tls-ca")
                .arg(&tls.ca);
        } else {
            // Loopback only: the one place a node runs without TLS unless told to.
            command.arg("--plaintext");
        }
        let child = command
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
            "node {i}: pid {pid}  grpc {scheme}://127.0.0.1:{}  http {scheme}://127.0.0.1:{}  zone {}  log {}",
            DEV_GRPC_PORT_BASE + i as u16,
            DEV_HTTP_PORT_BASE + i as u16,
            dev_zone(i),
            dir.join("node.log").display()
        )?;
        children.push((i, child));
    }
    let endpoints: Vec<String> = (1..=nodes)
        .map(|i| format!("{scheme}://127.0.0.1:{}", DEV_GRPC_PORT_BASE + i as u16))
        .collect();
    println!("MILLRACE_ENDPOINT={}", endpoints.join(","));
    println!(
        "Console: {scheme}://127.0.0.1:{}/console  (metrics: /metrics)",
        DEV_HTTP_PORT_BASE + 1
    );
    if let Some(tls) = &tls {
        let ca = tls.ca.display();
        let http = format!("https://127.0.0.1:{}", DEV_HTTP_PORT_BASE + 1);
        println!("TLS is on, with a throwaway CA made for this data dir: {ca}");
        println!(
            "  millrace CLI:  export MILLRACE_CA_CERT={ca} MILLRACE_ENDPOINT={}",
            endpoints.join(",")
        );
        println!(
            "  AWS CLI:       aws --endpoint-url {http} --ca-bundle {ca} kinesis list-streams"
        );
        println!(
            "  boto3:         boto3.client(\"kinesis\", endpoint_url=\"{http}\", verify=\"{ca}\")"
        );
    }
    println!("Ctrl-C stops the cluster; run again with the same --data-dir to resume it.");

    let mut waits = Vec::new();
    let mut exits = Vec::new();
    for (i, mut child) in children {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        waits.push(tx);
        exits.push(tokio::spawn(async move {
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
        }));
    }
    // Ctrl-C, or a SIGTERM sent to `dev` alone (a supervisor, `kill`): either way the nodes are
    // stopped, not left running without their parent.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping the cluster");
    for w in waits {
        let _ = w.send(());
    }
    // Each node gets time to stop gracefully; one still running then is killed (kill_on_drop).
    let stopped = futures::future::join_all(exits);
    if tokio::time::timeout(DEV_STOP_TIMEOUT, stopped)
        .await
        .is_err()
    {
        tracing::warn!("a node did not stop within {DEV_STOP_TIMEOUT:?}; killing it");
    }
    Ok(())
}
