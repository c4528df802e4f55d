//! A harness that runs real `millrace serve` processes on loopback and kills them for real.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millrace_client::{Client, ClientConfig};

pub struct NodeProc {
    /// `--join` seed instead of `--peers` (a node added to a running cluster).
    pub join: Option<String>,
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub zone: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub root: PathBuf,
    pub nodes: Vec<NodeProc>,
    peers: String,
    /// Extra environment for every node (`MILLRACE_*` settings).
    env: Vec<(String, String)>,
    /// The cluster secret every node of a plaintext cluster signs its internal requests with
    /// (as `millrace dev`); a TLS cluster proves its nodes with their certificates alone.
    pub secret: Option<PathBuf>,
    /// TLS on both ports and between nodes (see [`Cluster::start_tls`]).
    pub tls: Option<TestTls>,
}

/// A cluster's throwaway CA and node certificates (`root/tls`).
pub struct TestTls {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub pki: millrace_security::dev_pki::DevPki,
}

impl TestTls {
    pub fn cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }

    pub fn key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }

    /// A client configuration that trusts this cluster's CA.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            ca_cert: Some(self.ca.clone()),
            ..test_client_config()
        }
    }
}

/// A free port below the kernel's ephemeral range (32768+), so that the outgoing connections of
/// running nodes cannot take it between this check and the node's bind. Ports are handed out
/// from a per-process counter, offset by the process id, so parallel tests do not collide.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 100) as u16 * 100;
    for _ in 0..10_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

impl Cluster {
    /// Starts `n` nodes in zones a, b, c, … and waits until every one is ready.
    pub async fn start(name: &str, n: usize) -> Cluster {
        Cluster::start_with_env(name, n, &[]).await
    }

    /// Like [`Cluster::start`], with `MILLRACE_*` settings for every node.
    pub async fn start_with_env(name: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
        let zones: Vec<String> = (0..n)
            .map(|i| ((b'a' + i as u8) as char).to_string())
            .collect();
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        Cluster::start_zoned(name, &zones, env).await
    }

    /// Like [`Cluster::start`], with TLS on both ports and between nodes (a fresh CA).
    pub async fn start_tls(name: &str, n: usize) -> Cluster {
        let zones: Vec<String> = (0..n)
            .map(|i| ((b'a' + i as u8) as char).to_string())
            .collect();
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        Cluster::start_with(name, &zones, &[], true).await
    }

    /// One node per entry of `zones` (node i+1 in `zones[i]`), all initial metadata voters.
    pub async fn start_zoned(name: &str, zones: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(name, zones, env, false).await
    }

    async fn start_with(name: &str, zones: &[&str], env: &[(&str, &str)], tls: bool) -> Cluster {
        let n = zones.len();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("clusters")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("cluster dir");
        let nodes: Vec<NodeProc> = (1..=n as u64)
            .map(|id| NodeProc {
                join: None,
                id,
                grpc: format!("127.0.0.1:{}", free_port()),
                http: format!("127.0.0.1:{}", free_port()),
                zone: zones[(id - 1) as usize].to_string(),
                data_dir: root.join(format!("node-{id}")),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let secret = (!tls).then(|| root.join("cluster-secret"));
        if let Some(secret) = &secret {
            millrace_security::peer_auth::ClusterSecret::create_file(secret).expect("secret");
        }
        let tls = tls.then(|| {
            let pki =
                millrace_security::dev_pki::DevPki::generate(&(1..=n as u64).collect::<Vec<_>>())
                    .expect("dev CA");
            let dir = root.join("tls");
            let ca = pki.write(&dir).expect("TLS files").ca;
            TestTls { dir, ca, pki }
        });
        let mut cluster = Cluster {
            root,
            nodes,
            peers,
            env,
            secret,
            tls,
        };
        for id in 1..=n as u64 {
            cluster.spawn(id);
        }
        cluster.wait_ready(Duration::from_secs(60)).await;
        cluster
    }

    /// The value of node `id`'s unlabelled metric `name` (as `GET /metrics` shows it), if
    /// the node answers and exports it.
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let (code, body) = self.get(id, "/metrics")?;
        if code != 200 {
            return None;
        }
        body.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse().ok())
    }

    /// Node `id`'s HTTP address (host:port).
    pub fn http_addr(&self, id: u64) -> &str {
        &self.node(id).http
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    /// Starts (or restarts, on the same data dir) node `id`.
    pub fn spawn(&mut self, id: u64) {
        self.spawn_with_args(id, &[]);
    }

    /// [`Cluster::spawn`] with extra `serve` flags for this start of the node only.
    pub fn spawn_with_args(&mut self, id: u64, extra: &[&str]) {
        let peers = self.peers.clone();
        let env = self.env.clone();
        let node = &self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} is already running");
        std::fs::create_dir_all(&node.data_dir).expect("node dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .expect("node log");
        let (how, whom) = match &node.join {
            Some(seed) => ("--join", seed.clone()),
            None => ("--peers", peers),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_millrace"));
        command.arg("serve");
        if let Some(secret) = &self.secret {
            command.arg("--cluster-secret-file").arg(secret);
        }
        if let Some(tls) = &self.tls {
            if !tls.cert(id).exists() {
                tls.pki
                    .issue_node(id, &millrace_security::dev_pki::DEV_HOSTS)
                    .and_then(|c| c.write(&tls.dir))
                    .expect("node certificate");
            }
            command
                .arg("--tls-cert")
                .arg(tls.cert(id))
                .arg("--tls-key")
                .arg(tls.key(id))
                .arg("--tls-ca")
                .arg(&tls.ca);
        } else {
            command.arg("--plaintext");
        }
        let node = &mut self.nodes[(id - 1) as usize];
        let child = command
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--grpc-addr", &node.grpc])
            .args(["--http-addr", &node.http])
            .args(["--zone", &node.zone])
            .args([how, &whom])
            .args(extra)
            .env("MILLRACE_LOG", "info,openraft=warn")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start millrace serve");
        node.child = Some(child);
    }

    /// Starts a new node in `zone` that joins through node 1 (`serve --join`); returns its id.
    pub async fn join_node(&mut self, zone: &str) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        self.nodes.push(NodeProc {
            join: Some(self.nodes[0].grpc.clone()),
            id,
            grpc: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            zone: zone.to_string(),
            data_dir: self.root.join(format!("node-{id}")),
            child: None,
        });
        self.spawn(id);
        self.wait_ready(Duration::from_secs(60)).await;
        id
    }

    /// Waits for node `id` to exit on its own; returns whether it exited with status 0.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> bool {
        let node = &mut self.nodes[(id - 1) as usize];
        let mut child = node.child.take().expect("node is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Freezes node `id` (SIGSTOP): its sockets stay open and nothing answers, as when a
    /// node stalls or its packets are dropped. [`Cluster::resume`] thaws it.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// Thaws node `id` after [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let child = self.node(id).child.as_ref().expect("node running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} node {id}");
    }

    /// Graceful stop: SIGTERM, then the process must exit on its own with status 0.
    pub async fn stop(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        let mut child = node.child.take().expect("node is running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "node {id} exited with {status} after SIGTERM"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not exit within 30 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running node answers /readyz with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        for id in self.running() {
            wait_until(timeout, &format!("node {id} ready"), || async move {
                self.get(id, "/readyz").is_some_and(|(code, _)| code == 200)
            })
            .await;
        }
    }

    /// A GET on node `id`'s HTTP port (HTTPS on a TLS cluster): (status code, body). On a
    /// cluster with access keys it is signed with the first bootstrap key, as the status pages
    /// require.
    pub fn get(&self, id: u64, path: &str) -> Option<(u16, String)> {
        let env = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let signer = env("MILLRACE_ACCESS_KEYS").and_then(|keys| {
            let first = keys.split(',').next()?.trim().to_string();
            let (key_id, secret) = first.split_once(':')?;
            Some(SigV4Key {
                key_id: key_id.to_string(),
                secret: secret.to_string(),
                region: env("MILLRACE_REGION").unwrap_or_else(|| "us-east-1".into()),
            })
        });
        self.get_as(id, path, signer.as_ref())
    }

    /// A GET on node `id`'s HTTP port signed with `key` (none: unsigned).
    pub fn get_as(&self, id: u64, path: &str, key: Option<&SigV4Key>) -> Option<(u16, String)> {
        let addr = &self.node(id).http;
        let headers = key.map(|k| k.headers(addr, path)).unwrap_or_default();
        self.get_with(id, path, &headers)
    }

    /// A GET on node `id`'s HTTP port with extra header lines (`Name: value\r\n` each).
    pub fn get_with(&self, id: u64, path: &str, headers: &str) -> Option<(u16, String)> {
        let addr = &self.node(id).http;
        match &self.tls {
            Some(tls) => https_get_with(addr, path, headers, &tls.ca),
            None => http_get_with(addr, path, headers),
        }
    }

    /// `http://HOST:PORT`, or `https://` on a TLS cluster.
    pub fn url(&self, addr: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    fn client_config(&self) -> ClientConfig {
        match &self.tls {
            Some(tls) => tls.client_config(),
            None => test_client_config(),
        }
    }

    /// A client over every node's endpoint.
    pub fn client(&self) -> Client {
        Client::with_config(
            self.nodes.iter().map(|n| self.url(&n.grpc)),
            self.client_config(),
        )
        .expect("client")
    }

    /// A client bound to one node only.
    pub fn client_for(&self, id: u64) -> Client {
        Client::with_config([self.url(&self.node(id).grpc)], self.client_config()).expect("client")
    }

    /// The node's `/v1/node/status` JSON, if it answers.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let (code, body) = self.get(id, "/v1/node/status")?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Shard groups (id ≠ 0) that node `id` currently leads.
    pub fn shard_leaderships(&self, id: u64) -> Vec<u64> {
        let Some(st) = self.status(id) else {
            return Vec::new();
        };
        st["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["group_id"].as_u64() != Some(0) && g["state"] == "Leader")
            .filter_map(|g| g["group_id"].as_u64())
            .collect()
    }

    /// Node `id`'s log file (its stderr).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.join("node.log")
    }

    /// The log directory of a group replica on node `id`.
    pub fn group_dir(&self, id: u64, group_id: u64) -> PathBuf {
        self.node(id)
            .data_dir
            .join("groups")
            .join(format!("{group_id:020}"))
    }

    /// First log index of each segment file of a group replica on node `id`, sorted.
    pub fn segment_bases(&self, id: u64, group_id: u64) -> Vec<u64> {
        let mut bases: Vec<u64> = std::fs::read_dir(self.group_dir(id, group_id))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()
            })
            .collect();
        bases.sort_unstable();
        bases
    }

    /// Ids of the shard groups with a log directory on node `id` (checked on disk).
    pub fn group_dirs(&self, id: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = std::fs::read_dir(self.node(id).data_dir.join("groups"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|g| *g != 0)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Applied index of each group on node `id`.
    pub fn applied(&self, id: u64) -> Vec<(u64, Option<u64>)> {
        let Some(st) = self.status(id) else {
            return Vec::new();
        };
        st["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| Some((g["group_id"].as_u64()?, g["applied_index"].as_u64())))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("cluster data and node logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub fn test_client_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(15),
        call_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get_with(addr, path, "")
}

/// An access key that signs GETs with SigV4 (for the `kinesis` service in `region`).
pub struct SigV4Key {
    pub key_id: String,
    pub secret: String,
    pub region: String,
}

impl SigV4Key {
    /// The headers (besides `Host`) of a GET of `path` on `addr`, signed now, as request lines.
    pub fn headers(&self, addr: &str, path: &str) -> String {
        use millrace_node::api::kinesis::sigv4;
        let mut headers = http::HeaderMap::new();
        headers.insert("host", addr.parse().expect("host header"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        sigv4::sign(
            &http::Method::GET,
            &path.parse().expect("path"),
            &mut headers,
            b"",
            &self.key_id,
            &self.secret,
            &self.region,
            now,
        );
        headers
            .iter()
            .filter(|(k, _)| *k != "host")
            .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().expect("ascii header")))
            .collect()
    }
}

/// [`http_get`] with extra header lines (`Name: value\r\n` each).
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// [`http_get`] over TLS, trusting the CA in `ca` (its own thread and runtime, so that it can
/// be called from synchronous code and from tests' runtimes alike).
pub fn https_get(addr: &str, path: &str, ca: &std::path::Path) -> Option<(u16, String)> {
    https_get_with(addr, path, "", ca)
}

/// [`https_get`] with extra header lines (`Name: value\r\n` each).
pub fn https_get_with(
    addr: &str,
    path: &str,
    headers: &str,
    ca: &std::path::Path,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_service::Service;
    let (addr, path, ca) = (addr.to_string(), path.to_string(), ca.to_path_buf());
    let headers = headers.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let tls = millrace_security::ClientTls::with_ca_file(&ca)
                .ok()?
                .http1();
            let uri: http::Uri = format!("https://{addr}").parse().ok()?;
            let io = tokio::time::timeout(Duration::from_secs(5), tls.connector().call(uri))
                .await
                .ok()?
                .ok()?;
            let mut s = io.into_inner();
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").as_bytes())
                .await
                .ok()?;
            let mut raw = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            // Until the server closes (a missing close_notify ends the read with an error).
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let code = raw.split_whitespace().nth(1)?.parse().ok()?;
            let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
            Some((code, body))
        })
    })
    .join()
    .ok()?
}

/// Polls `cond` until it holds, failing the test with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.1 POST of a Kinesis action: (status, body).
pub fn raw_post(addr: &str, action: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: Kinesis_20131202.{action}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
}
