//! The CLI and `millrace dev` contracts, exercised through the real binary: `dev` on its fixed
//! ports, the client subcommands' JSON output, fail-over across endpoints, Ctrl-C, resume.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{http_get, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_millrace");
const ENDPOINTS: &str = "http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103";

/// A running `millrace dev`; stopped with Ctrl-C (SIGINT) even when the test fails.
struct Dev(Child);

impl Dev {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
}

/// Starts `millrace dev` and returns it with the child PIDs it printed.
fn start_dev(dir: &Path) -> (Dev, Vec<u32>) {
    let mut dev = Command::new(BIN)
        .args(["dev", "--nodes", "3", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start millrace dev");
    let mut pids = Vec::new();
    let mut lines = BufReader::new(dev.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        let line = line.expect("dev output");
        if let Some(rest) = line.split("pid ").nth(1) {
            pids.push(
                rest.split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .expect("pid"),
            );
            assert!(
                line.contains("grpc http://127.0.0.1:710"),
                "endpoint printed: {line}"
            );
        }
        if line.starts_with("MILLRACE_ENDPOINT=") {
            assert_eq!(line, format!("MILLRACE_ENDPOINT={ENDPOINTS}"));
            break;
        }
    }
    // Keep draining stdout so dev never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(pids.len(), 3, "dev prints one PID per node");
    (Dev(dev), pids)
}

fn cli(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .env("MILLRACE_ENDPOINT", ENDPOINTS)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run millrace");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().expect("millrace output")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn wait_ready() {
    for port in [4567, 4568, 4569] {
        wait_until(
            Duration::from_secs(60),
            &format!("node on HTTP {port} ready"),
            || async move {
                http_get(&format!("127.0.0.1:{port}"), "/readyz").is_some_and(|(c, _)| c == 200)
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_and_cli_contract() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut dev, pids) = start_dev(&dir);
    wait_ready().await;
    assert_eq!(
        http_get("127.0.0.1:4567", "/healthz").map(|(c, _)| c),
        Some(200)
    );

    let created = json_lines(&cli(
        &["stream", "create", "clitest", "--shards", "2"],
        None,
    ));
    assert_eq!(created[0]["status"], "ACTIVE");
    let listed = cli(&["stream", "list"], None);
    assert!(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l == "clitest"));
    let described = cli(&["stream", "describe", "clitest"], None);
    let d: serde_json::Value = serde_json::from_slice(&described.stdout).expect("describe JSON");
    assert_eq!(d["shards"].as_array().unwrap().len(), 2);

    let one = json_lines(&cli(
        &["put", "clitest", "--partition-key", "k", "--data", "hello"],
        None,
    ));
    assert_eq!(one.len(), 1);
    assert!(one[0]["shard_id"].as_str().unwrap().starts_with("shardId-"));
    let many = json_lines(&cli(
        &["put", "clitest", "--partition-key", "k"],
        Some("a\nb\nc\n"),
    ));
    assert_eq!(many.len(), 3, "one record per stdin line");

    let shard = one[0]["shard_id"].as_str().unwrap().to_string();
    let read = json_lines(&cli(&["read", "clitest", "--shard", &shard], None));
    let datas: Vec<&str> = read.iter().map(|r| r["data"].as_str().unwrap()).collect();
    assert_eq!(
        datas,
        vec!["hello", "a", "b", "c"],
        "same key, same shard, in order"
    );
    for (r, p) in read.iter().zip(one.iter().chain(many.iter())) {
        assert_eq!(r["sequence_number"], p["sequence_number"]);
        assert_eq!(r["partition_key"], "k");
        assert_eq!(r["shard_id"], p["shard_id"]);
    }
    let first_seq = read[0]["sequence_number"].as_str().unwrap();
    let after = json_lines(&cli(
        &[
            "read",
            "clitest",
            "--shard",
            &shard,
            "--from",
            &format!("after:{first_seq}"),
            "--limit",
            "2",
        ],
        None,
    ));
    let datas: Vec<&str> = after.iter().map(|r| r["data"].as_str().unwrap()).collect();
    assert_eq!(datas, vec!["a", "b"]);
    assert_eq!(
        json_lines(&cli(&["read", "clitest"], None)).len(),
        4,
        "all shards by default"
    );

    // tail: every shard through SubscribeToShard; without --follow it stops once caught up.
    let tailed = json_lines(&cli(&["tail", "clitest", "--from", "trim-horizon"], None));
    let mut datas: Vec<&str> = tailed.iter().map(|r| r["data"].as_str().unwrap()).collect();
    datas.sort_unstable();
    assert_eq!(datas, vec!["a", "b", "c", "hello"]);
    // tail --follow prints records written while it runs (here from a point in time, so the
    // puts cannot race its subscription), and `put --file --rate` writes them.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 1000;
    let mut follower = Command::new(BIN)
        .env("MILLRACE_ENDPOINT", ENDPOINTS)
        .args(["tail", "clitest", "--follow", "--limit", "3"])
        .args(["--from", &format!("at-timestamp:{since}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tail");
    let file = dir.join("records.txt");
    std::fs::write(&file, "x\ny\nz\n").unwrap();
    let put = json_lines(&cli(
        &[
            "put",
            "clitest",
            "--partition-key",
            "f",
            "--rate",
            "20",
            "--file",
        ]
        .iter()
        .copied()
        .chain([file.to_str().unwrap()])
        .collect::<Vec<_>>(),
        None,
    ));
    assert_eq!(put.len(), 3);
    wait_until(
        Duration::from_secs(30),
        "tail --follow exits after 3 records",
        || {
            let done = matches!(follower.try_wait(), Ok(Some(_)));
            async move { done }
        },
    )
    .await;
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    let followed = json_lines(&out);
    let datas: Vec<&str> = followed
        .iter()
        .map(|r| r["data"].as_str().unwrap())
        .collect();
    assert_eq!(datas, vec!["x", "y", "z"], "one key, one shard, in order");
    let bad_rate = cli(
        &["put", "clitest", "--partition-key", "k", "--rate", "0"],
        Some("a\n"),
    );
    assert!(!bad_rate.status.success());
    assert!(String::from_utf8_lossy(&bad_rate.stderr).contains("--rate"));

    let missing = cli(&["stream", "describe", "nope"], None);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("nope"), "{err}");

    // The stream and cluster administration commands the README shows.
    let tagged = json_lines(&cli(
        &["stream", "tag", "clitest", "--add", "team=payments"],
        None,
    ));
    assert_eq!(tagged[0]["team"], "payments");
    let kept = json_lines(&cli(
        &["stream", "retention", "clitest", "--hours", "48"],
        None,
    ));
    assert_eq!(kept[0]["retention_period_hours"], 48);
    let split = json_lines(&cli(
        &["stream", "split", "clitest", "--shard", &shard],
        None,
    ));
    assert_eq!(
        split[0]["shards"], 4,
        "two children next to the two parents' records"
    );
    let status = json_lines(&cli(&["cluster", "status", "--json"], None));
    assert_eq!(status[0]["nodes"].as_array().unwrap().len(), 3);
    let text = cli(&["cluster", "status"], None);
    assert!(String::from_utf8_lossy(&text.stdout).contains("under-replicated shards: 0"));

    // Fail-over: the first endpoint refuses connections.
    let out = Command::new(BIN)
        .args([
            "--endpoint",
            "http://127.0.0.1:1,http://127.0.0.1:7102",
            "stream",
            "list",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ctrl-C stops every node.
    Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(30), "every node process exits", || {
        let gone = pids.iter().all(|p| !alive(*p));
        async move { gone }
    })
    .await;
    dev.wait().unwrap();

    // Run again on the same data dir: the cluster resumes with its data.
    let (mut dev, pids) = start_dev(&dir);
    wait_ready().await;
    assert_eq!(json_lines(&cli(&["read", "clitest"], None)).len(), 7);
    // A SIGTERM to `dev` alone (a supervisor's stop) stops its nodes too.
    Command::new("kill")
        .arg(dev.id().to_string())
        .status()
        .unwrap();
    wait_until(Duration::from_secs(30), "every node process exits", || {
        let gone = pids.iter().all(|p| !alive(*p));
        async move { gone }
    })
    .await;
    dev.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
