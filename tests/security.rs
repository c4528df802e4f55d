//! Issue 15 against real node processes: TLS on both ports, certificates rotated under load,
//! and internal services that answer only the cluster's own nodes — with mutual TLS, and on a
//! plaintext cluster with the cluster secret. Every refusal is asserted, and so is that it
//! changed nothing.

mod common;

use std::time::Duration;

use common::{wait_until, Cluster};
use millrace_client::{Client, PutRecord, StartPosition};
use millrace_proto::internal as ipb;
use millrace_proto::internal::internal_client::InternalClient;
use millrace_raft::TypeConfig;
use millrace_security::dev_pki::{der_of, DevPki, DEV_HOSTS};
use millrace_security::{ClientTls, NodeTls, TlsConnector, TlsFiles};
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

const SHARD: &str = "shardId-000000000000";

async fn put(client: &Client, stream: &str, prefix: &str, n: usize) {
    let records = (0..n)
        .map(|i| PutRecord {
            partition_key: format!("k{i}"),
            data: format!("{prefix}-{i}").into_bytes().into(),
            explicit_hash_key: None,
        })
        .collect();
    let results = client.put_records(stream, records).await.expect("put");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

async fn read_all(client: &Client, stream: &str) -> Vec<String> {
    let mut it = client
        .get_shard_iterator(stream, SHARD, StartPosition::TrimHorizon)
        .await
        .expect("iterator");
    let mut out = Vec::new();
    loop {
        let page = client.get_records(&it, 1000).await.expect("records");
        if page.records.is_empty() {
            return out;
        }
        out.extend(
            page.records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
        );
        it = page.next_shard_iterator;
    }
}

/// The metadata group's term as node `id` sees it.
fn meta_term(cluster: &Cluster, id: u64) -> u64 {
    let status = cluster.status(id).expect("status");
    status["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group_id"] == 0))
        .and_then(|g| g["term"].as_u64())
        .expect("metadata group term")
}

/// A Vote for the metadata group from node `from` with a term far ahead: were it taken, every
/// node would move to that term and the cluster would hold an election.
fn forged_vote(from: u64, term: u64) -> ipb::RaftRequest {
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(
        millrace_raft::types::Vote::new(term, from),
        None,
    );
    ipb::RaftRequest {
        group_id: 0,
        rpc: ipb::RaftRpc::Vote as i32,
        payload: rmp_serde::to_vec(&vote).expect("encode vote"),
        from_node_id: from,
    }
}

fn refused(r: Result<tonic::Response<ipb::RaftReply>, tonic::Status>) -> tonic::Status {
    match r {
        Ok(reply) => panic!(
            "a forged Raft message was answered: {:?}",
            reply.into_inner()
        ),
        Err(status) => status,
    }
}

fn internal_over(channel: Channel) -> InternalClient<Channel> {
    InternalClient::new(channel)
}

#[tokio::test]
async fn tls_cluster_serves_clients_refuses_strangers_and_rotates_certificates() {
    let cluster = Cluster::start_tls("sec-tls", 3).await;
    let tls = cluster.tls.as_ref().expect("TLS cluster");
    let client = cluster.client();
    client.create_stream("secure", 1).await.expect("create");
    client
        .wait_for_active("secure", Duration::from_secs(60))
        .await
        .expect("active");
    put(&client, "secure", "before", 20).await;
    assert_eq!(read_all(&client, "secure").await.len(), 20);

    // The Kinesis port speaks HTTPS (HTTP/1.1 by ALPN) and not plaintext HTTP.
    assert_eq!(cluster.get(1, "/readyz").map(|(c, _)| c), Some(200));
    assert_eq!(common::http_get(&cluster.nodes[0].http, "/readyz"), None);

    // Plaintext gRPC to the TLS port gets no answer, and the node counts the failed handshake.
    let failed_before = cluster.status(1).unwrap()["security"]["grpc"]["tls_handshakes_failed"]
        .as_u64()
        .unwrap();
    let plain = Client::with_config(
        [format!("http://{}", cluster.nodes[0].grpc)],
        millrace_client::ClientConfig {
            call_timeout: Duration::from_secs(2),
            ..common::test_client_config()
        },
    )
    .unwrap();
    assert!(plain.describe_cluster().await.is_err());
    let failed_after = cluster.status(1).unwrap()["security"]["grpc"]["tls_handshakes_failed"]
        .as_u64()
        .unwrap();
    assert!(
        failed_after > failed_before,
        "{failed_before} -> {failed_after}"
    );

    // A client that does not trust the cluster's CA refuses the nodes.
    let other = DevPki::generate(&[1]).unwrap();
    let other_dir = cluster.root.join("other-ca");
    let other_paths = other.write(&other_dir).unwrap();
    let stranger = Client::with_config(
        [cluster.url(&cluster.nodes[0].grpc)],
        millrace_client::ClientConfig {
            ca_cert: Some(other_paths.ca.clone()),
            call_timeout: Duration::from_secs(2),
            ..common::test_client_config()
        },
    )
    .unwrap();
    let err = stranger.describe_cluster().await.unwrap_err().to_string();
    assert!(err.contains("certificate"), "{err}");

    // A node certificate of another cluster (another CA) does not reach the internal services.
    let foreign_files = TlsFiles {
        cert: other_paths.nodes[0].1.clone(),
        key: other_paths.nodes[0].2.clone(),
        ca: tls.ca.clone(),
    };
    let foreign = NodeTls::load(foreign_files).unwrap();
    let endpoint = Endpoint::from_shared(format!("http://{}", cluster.nodes[0].grpc)).unwrap();
    let mut internal =
        internal_over(endpoint.connect_with_connector_lazy(TlsConnector::new(foreign)));
    let term = meta_term(&cluster, 1);
    assert!(internal.raft(forged_vote(1, term + 100)).await.is_err());

    // A client of the cluster (trusts the CA, shows no node certificate) is no peer.
    let as_client = ClientTls::with_ca_file(&tls.ca).unwrap();
    let mut internal = internal_over(endpoint.connect_with_connector_lazy(as_client.connector()));
    let status = refused(internal.raft(forged_vote(1, term + 100)).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("node certificate"), "{status:?}");

    // A certificate from the cluster's own CA that names a node outside the cluster.
    let outsider = tls.pki.issue_node(99, &DEV_HOSTS).unwrap();
    let (cert, key) = outsider.write(&tls.dir).unwrap();
    let outsider = NodeTls::load(TlsFiles {
        cert,
        key,
        ca: tls.ca.clone(),
    })
    .unwrap();
    let mut internal =
        internal_over(endpoint.connect_with_connector_lazy(TlsConnector::new(outsider)));
    let status = refused(internal.raft(forged_vote(99, term + 100)).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("node 99 is not a member"),
        "{status:?}"
    );
    // Nothing moved: same term, same leader, and the refusals were counted.
    assert_eq!(meta_term(&cluster, 1), term);
    let s = cluster.status(1).unwrap();
    assert!(
        s["security"]["internal_requests_refused"].as_u64().unwrap() >= 2,
        "{s}"
    );

    // Rotate node 1's certificate while the client keeps its connections: new connections
    // get the new certificate (within the reload check's 2 s), old ones keep working.
    let fresh = tls.pki.issue_node(1, &DEV_HOSTS).unwrap();
    fresh.write(&tls.dir).unwrap();
    let want = der_of(&fresh.cert_pem);
    let uri: http::Uri = format!("http://{}", cluster.nodes[0].grpc).parse().unwrap();
    wait_until(
        Duration::from_secs(20),
        "node 1 serving its new certificate",
        || {
            let (uri, want) = (uri.clone(), want.clone());
            let mut connector = as_client.connector();
            async move {
                match connector.call(uri).await {
                    Ok(io) => io.inner().get_ref().1.peer_certificates().unwrap()[0] == want,
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    put(&client, "secure", "after", 20).await;
    let all = read_all(&client, "secure").await;
    assert_eq!(all.len(), 40);
    assert!(all.iter().any(|r| r == "after-19"));
    // A new client, and node 1's peers (new connections to it), work with the new one.
    let fresh_client =
        Client::with_config([cluster.url(&cluster.nodes[0].grpc)], tls.client_config()).unwrap();
    assert_eq!(read_all(&fresh_client, "secure").await.len(), 40);
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("node.log")).unwrap();
    assert!(
        log.contains("TLS certificate, key and CA reloaded"),
        "reload not logged"
    );
}

/// The headers of a peer signature made by hand from the documented format (version 1), so
/// the test checks the format itself, not only the code that makes it.
fn signed<T>(
    mut req: tonic::Request<T>,
    path: &str,
    secret: &[u8],
    node: u64,
    time_ms: u64,
    nonce: &str,
) -> tonic::Request<T> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("millrace-peer-v1\n{path}\n{node}\n{time_ms}\n{nonce}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let m = req.metadata_mut();
    m.insert("x-millrace-peer", node.to_string().parse().unwrap());
    m.insert("x-millrace-peer-time", time_ms.to_string().parse().unwrap());
    m.insert("x-millrace-peer-nonce", nonce.parse().unwrap());
    m.insert("x-millrace-peer-signature", signature.parse().unwrap());
    req
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_plaintext_cluster_takes_only_signed_fresh_internal_requests_from_members() {
    let cluster =
        Cluster::start_with_env("sec-secret", 1, &[("MILLRACE_REPLICATION_FACTOR", "1")]).await;
    let secret = std::fs::read_to_string(cluster.secret.as_ref().unwrap()).unwrap();
    let secret = secret.trim().as_bytes().to_vec();
    let endpoint = Endpoint::from_shared(format!("http://{}", cluster.nodes[0].grpc)).unwrap();
    let mut internal = internal_over(endpoint.connect_lazy());
    let term = meta_term(&cluster, 1);
    const RAFT: &str = "/millrace.internal.v1.Internal/Raft";
    const PING: &str = "/millrace.internal.v1.Internal/Ping";

    // Unsigned.
    let status = refused(internal.raft(forged_vote(1, term + 100)).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("not signed"), "{status:?}");

    // Signed with another secret.
    let req = signed(
        tonic::Request::new(forged_vote(1, term + 100)),
        RAFT,
        b"not the cluster's secret at all",
        1,
        now_ms(),
        "abc.1",
    );
    let status = refused(internal.raft(req).await);
    assert!(status.message().contains("does not match"), "{status:?}");

    // Stale, and from the future (beyond the 5-minute window).
    for time in [now_ms() - 301_000, now_ms() + 301_000] {
        let req = signed(
            tonic::Request::new(forged_vote(1, term + 100)),
            RAFT,
            &secret,
            1,
            time,
            "abc.2",
        );
        let status = refused(internal.raft(req).await);
        assert!(
            status.message().contains("from this node's clock"),
            "{status:?}"
        );
    }

    // Rightly signed, but as a node that is not a member.
    let req = signed(
        tonic::Request::new(forged_vote(99, term + 100)),
        RAFT,
        &secret,
        99,
        now_ms(),
        "abc.3",
    );
    let status = refused(internal.raft(req).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("node 99 is not a member"),
        "{status:?}"
    );

    // A request signed as a member is answered once; the same request again is a replay.
    let ping = |nonce: &str| {
        signed(
            tonic::Request::new(ipb::PingRequest {
                from_node_id: 1,
                nudge_groups: vec![],
            }),
            PING,
            &secret,
            1,
            now_ms(),
            nonce,
        )
    };
    internal.ping(ping("beef.7")).await.expect("a signed ping");
    let status = internal.ping(ping("beef.7")).await.unwrap_err();
    assert!(status.message().contains("replayed"), "{status:?}");

    // A metadata command of a newer version (unknown here), rightly signed by a member, is
    // refused before it is committed: committed, it would stop every replica that cannot
    // apply it.
    let newer = signed(
        tonic::Request::new(ipb::MetaProposeRequest {
            command: br#"{"SetSomethingNewer":{"value":1}}"#.to_vec(),
        }),
        "/millrace.internal.v1.Internal/MetaPropose",
        &secret,
        1,
        now_ms(),
        "cafe.1",
    );
    let reply = internal
        .meta_propose(newer)
        .await
        .expect("answered")
        .into_inner();
    assert!(reply.error.contains("does not know"), "{reply:?}");

    // None of it moved the group.
    assert_eq!(meta_term(&cluster, 1), term);
    let s = cluster.status(1).unwrap();
    assert!(
        s["security"]["internal_requests_refused"].as_u64().unwrap() >= 6,
        "{s}"
    );
    // The cluster itself, whose nodes hold the secret, works.
    let client = cluster.client();
    client.create_stream("signed", 1).await.expect("create");
    client
        .wait_for_active("signed", Duration::from_secs(60))
        .await
        .expect("active");
    put(&client, "signed", "r", 5).await;
    assert_eq!(read_all(&client, "signed").await.len(), 5);
}

/// A raw gRPC call to `path`'s ListStreams with signature headers made by hand from the
/// documented format (version 1) — the body digest of `signed_body`, the date `date_ms`.
async fn list_streams_signed(
    addr: &str,
    key_id: &str,
    secret: &str,
    date_ms: u64,
    signed_body: Option<&[u8]>,
) -> Result<(), tonic::Status> {
    use hmac::{Hmac, Mac};
    use prost::Message;
    const PATH: &str = "/millrace.v1.Millrace/ListStreams";
    let request = millrace_proto::v1::ListStreamsRequest::default();
    // The body on the wire: the gRPC frame (uncompressed flag, length, message).
    let message = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        signed_body.unwrap_or(&frame),
    ));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(
        format!("MILLRACE-HMAC-SHA256-v1\n{PATH}\n{key_id}\n{date_ms}\n{digest}").as_bytes(),
    );
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut req = tonic::Request::new(request);
    let m = req.metadata_mut();
    m.insert("x-millrace-access-key-id", key_id.parse().unwrap());
    m.insert("x-millrace-date", date_ms.to_string().parse().unwrap());
    m.insert("x-millrace-content-sha256", digest.parse().unwrap());
    m.insert("x-millrace-signature", signature.parse().unwrap());
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    millrace_proto::v1::millrace_client::MillraceClient::new(channel)
        .list_streams(req)
        .await
        .map(|_| ())
}

fn symbol_of(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(millrace_proto::ERROR_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn grpc_calls_must_be_signed_with_an_access_key_when_keys_are_configured() {
    let env = [
        ("MILLRACE_REPLICATION_FACTOR", "1"),
        (
            "MILLRACE_ACCESS_KEYS",
            "AKIDWRITER:writer-secret,AKIDOTHER:other-secret",
        ),
    ];
    let cluster = Cluster::start_with_env("sec-keys", 1, &env).await;
    let addr = cluster.nodes[0].grpc.clone();
    let with = |creds: Option<millrace_client::Credentials>| {
        Client::with_config(
            [format!("http://{addr}")],
            millrace_client::ClientConfig {
                credentials: creds,
                ..common::test_client_config()
            },
        )
        .unwrap()
    };

    // No credentials.
    let err = with(None).list_streams().await.unwrap_err();
    assert_eq!(err.symbol(), Some("UNAUTHENTICATED"), "{err}");
    assert!(err.to_string().contains("not signed"), "{err}");
    // An unknown key, and a known key with the wrong secret.
    let err = with(Some(millrace_client::Credentials::new("AKIDNOBODY", "x")))
        .list_streams()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AKIDNOBODY is not known"), "{err}");
    let err = with(Some(millrace_client::Credentials::new(
        "AKIDWRITER",
        "guess",
    )))
    .list_streams()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    // The right key works for every kind of call: unary, the streaming PutRecords pipeline,
    // reads.
    let client = with(Some(millrace_client::Credentials::new(
        "AKIDWRITER",
        "writer-secret",
    )));
    client.create_stream("keyed", 1).await.expect("create");
    client
        .wait_for_active("keyed", Duration::from_secs(60))
        .await
        .expect("active");
    put(&client, "keyed", "k", 10).await;
    assert_eq!(read_all(&client, "keyed").await.len(), 10);

    // Hand-made signatures: the documented format is accepted; a stale or future date, and a
    // body other than the one signed, are not.
    list_streams_signed(&addr, "AKIDOTHER", "other-secret", now_ms(), None)
        .await
        .expect("a signature made from the documented format");
    for date in [now_ms() - 301_000, now_ms() + 301_000] {
        let status = list_streams_signed(&addr, "AKIDOTHER", "other-secret", date, None)
            .await
            .unwrap_err();
        assert_eq!(symbol_of(&status), "UNAUTHENTICATED");
        assert!(
            status.message().contains("from the server's clock"),
            "{status:?}"
        );
    }
    let status = list_streams_signed(
        &addr,
        "AKIDOTHER",
        "other-secret",
        now_ms(),
        Some(b"another body"),
    )
    .await
    .unwrap_err();
    assert!(
        status
            .message()
            .contains("does not match its signed digest"),
        "{status:?}"
    );

    // The CLI signs with the flags, or with the standard AWS variables.
    let cli = |envs: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["--endpoint", &format!("http://{addr}"), "stream", "list"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("MILLRACE_ACCESS_KEY_ID")
            .env_remove("MILLRACE_SECRET_ACCESS_KEY")
            .envs(envs.iter().copied())
            .output()
            .expect("run millrace")
    };
    let out = cli(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        ("AWS_ACCESS_KEY_ID", "AKIDWRITER"),
        ("AWS_SECRET_ACCESS_KEY", "writer-secret"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("keyed"));
    // The node never logs a secret.
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("node.log")).unwrap();
    assert!(!log.contains("writer-secret") && !log.contains("other-secret"));
}

/// Sends `request` on a fresh connection to `addr` and returns what the server sends back
/// before it closes the connection (or `deadline` passes: then `None`).
async fn exchange(addr: &str, request: &[u8], deadline: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn slow_half_sent_and_oversized_http_requests_get_an_answer_and_lose_their_connection() {
    let env = [
        ("MILLRACE_REPLICATION_FACTOR", "1"),
        ("MILLRACE_HTTP_HEADER_READ_TIMEOUT", "1s"),
        ("MILLRACE_HTTP_BODY_READ_TIMEOUT", "1s"),
    ];
    let cluster = Cluster::start_with_env("sec-limits", 1, &env).await;
    let http = cluster.nodes[0].http.clone();
    let head =
        "POST / HTTP/1.1\r\nHost: millrace\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\n\
                Content-Type: application/x-amz-json-1.1\r\n";

    // A declared body over the limit is refused at once, before any of it is sent.
    let started = std::time::Instant::now();
    let answer = exchange(
        &http,
        format!("{head}Content-Length: 100000000\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .expect("an answer, and the connection closed");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("larger than the limit of 16777216 bytes"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "413 took {:?}",
        started.elapsed()
    );

    // A body that stops halfway: 408 once the body-read timeout (1 s here) passes.
    let answer = exchange(
        &http,
        format!("{head}Content-Length: 100\r\n\r\n{{\"Limit\"").as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .expect("an answer within 10 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A head that never ends: the connection is closed after the header-read timeout.
    let started = std::time::Instant::now();
    exchange(&http, head.as_bytes(), Duration::from_secs(10))
        .await
        .expect("the connection closed within 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Junk, and a head over 64 KiB: answered or closed, never left hanging.
    let answer = exchange(&http, b"\x16\x03\x01junk\r\n\r\n", Duration::from_secs(10))
        .await
        .expect("junk answered or closed within 10 s");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let huge = format!("{head}X-Padding: {}\r\n\r\n", "a".repeat(70 * 1024));
    let answer = exchange(&http, huge.as_bytes(), Duration::from_secs(10))
        .await
        .expect("an oversized head answered or closed within 10 s");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // And the node serves as before.
    assert_eq!(cluster.get(1, "/readyz").map(|(c, _)| c), Some(200));
    let answer = exchange(
        &http,
        format!("{head}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}").as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_that_never_speak_are_closed_on_both_ports() {
    let env = [
        ("MILLRACE_REPLICATION_FACTOR", "1"),
        ("MILLRACE_HANDSHAKE_TIMEOUT", "1s"),
    ];
    let cluster = Cluster::start_with_env("sec-silent", 1, &env).await;
    for addr in [&cluster.nodes[0].grpc, &cluster.nodes[0].http] {
        let started = std::time::Instant::now();
        let answer = exchange(addr, b"", Duration::from_secs(10))
            .await
            .expect("a silent connection closed within 10 s");
        assert_eq!(answer, "", "{addr}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
    let s = cluster.status(1).unwrap();
    assert!(
        s["security"]["grpc"]["handshakes_timed_out"]
            .as_u64()
            .unwrap()
            >= 1,
        "{s}"
    );
    assert!(
        s["security"]["http"]["handshakes_timed_out"]
            .as_u64()
            .unwrap()
            >= 1,
        "{s}"
    );
    // Clients that speak are served as before.
    let client = cluster.client();
    assert!(client.list_streams().await.expect("list").is_empty());
}

/// A client of every node of `cluster`, signing with `key`.
fn keyed_client(cluster: &Cluster, nodes: &[u64], key: &str, secret: &str) -> Client {
    Client::with_config(
        nodes
            .iter()
            .map(|id| format!("http://{}", cluster.nodes[*id as usize - 1].grpc)),
        millrace_client::ClientConfig {
            credentials: Some(millrace_client::Credentials::new(key, secret)),
            ..common::test_client_config()
        },
    )
    .unwrap()
}

async fn put_one(client: &Client, stream: &str) -> Result<(), millrace_client::ClientError> {
    let record = PutRecord {
        partition_key: "k".into(),
        data: b"x".to_vec().into(),
        explicit_hash_key: None,
    };
    client
        .put_records(stream, vec![record])
        .await?
        .remove(0)
        .map(|_| ())
        .map_err(|e| millrace_client::ClientError::Unknown(format!("record refused: {e:?}")))
}

fn denied(r: Result<impl std::fmt::Debug, millrace_client::ClientError>, why: &str) {
    let err = r.expect_err("the call should be refused");
    assert_eq!(err.symbol(), Some("ACCESS_DENIED"), "{err}");
    assert!(err.to_string().contains(why), "{err}");
}

#[tokio::test]
async fn access_keys_and_policies_are_replicated_and_enforced_on_every_node() {
    // Prometheus's credential for /metrics: a token file, 0600 like every secret file.
    let token_file =
        std::env::temp_dir().join(format!("millrace-metrics-token-{}", std::process::id()));
    std::fs::write(&token_file, "scrape-token-0123456789\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let token_path = token_file.to_str().unwrap();
    let env = [
        ("MILLRACE_ACCESS_KEYS", "AKIDADMIN:admin-secret"),
        ("MILLRACE_METRICS_TOKEN_FILE", token_path),
    ];
    let cluster = Cluster::start_with_env("sec-perms", 3, &env).await;
    let admin = keyed_client(&cluster, &[1, 2, 3], "AKIDADMIN", "admin-secret");
    for name in ["orders", "orders-eu", "orders-audit", "payroll"] {
        admin.create_stream(name, 1).await.expect("create");
        admin
            .wait_for_active(name, Duration::from_secs(60))
            .await
            .expect("active");
    }

    // A key created through node 1 signs calls on node 3 once the entry is applied there.
    let created = admin.create_access_key().await.expect("create key");
    let (key, secret) = (created.access_key_id, created.secret_access_key);
    assert!(key.starts_with("MRK") && secret.len() == 40);
    let user = keyed_client(&cluster, &[3], &key, &secret);
    wait_until(
        Duration::from_secs(10),
        "the new key is known on node 3",
        || async { user.list_streams().await.is_ok() },
    )
    .await;
    // Without a policy it may do nothing, and sees no stream.
    assert!(user.list_streams().await.unwrap().is_empty());
    denied(
        put_one(&user, "orders").await,
        "because no identity-based policy allows the kinesis:PutRecords action",
    );

    let policy = r#"{"statements": [
        {"effect": "allow", "actions": ["read"], "streams": ["orders*"]},
        {"effect": "allow", "actions": ["write"], "streams": ["orders-*"]},
        {"effect": "deny", "actions": ["write"], "streams": ["orders-audit"]}]}"#;
    admin.put_policy(&key, policy).await.expect("put policy");
    assert!(admin
        .get_policy(&key)
        .await
        .unwrap()
        .contains("orders-audit"));
    wait_until(
        Duration::from_secs(10),
        "the policy is applied on node 3",
        || async { put_one(&user, "orders-eu").await.is_ok() },
    )
    .await;
    // May only read orders: writes are refused, reads work.
    denied(
        put_one(&user, "orders").await,
        &format!("User: arn:aws:iam::123456789012:user/{key} is not authorized to perform: kinesis:PutRecords on resource: arn:aws:kinesis:us-east-1:123456789012:stream/orders"),
    );
    put(&admin, "orders", "o", 3).await;
    assert_eq!(read_all(&user, "orders").await.len(), 3);
    // The deny overrides the allow of orders-*.
    denied(
        put_one(&user, "orders-audit").await,
        "with an explicit deny in an identity-based policy",
    );
    // Only the streams it may read are listed; admin and cluster actions are refused.
    assert_eq!(
        user.list_streams().await.unwrap(),
        ["orders", "orders-audit", "orders-eu"]
    );
    denied(user.create_stream("mine", 1).await, "kinesis:CreateStream");
    denied(user.create_access_key().await, "kinesis:CreateAccessKey");
    denied(
        user.get_shard_iterator("payroll", SHARD, StartPosition::TrimHorizon)
            .await,
        "stream/payroll",
    );

    // A resource policy that denies wins over the key's allow; one that allows grants what
    // the key's policy does not mention.
    let arn = |s: &str| format!("arn:aws:kinesis:us-east-1:123456789012:stream/{s}");
    let deny = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":{{"AWS":"arn:aws:iam::123456789012:user/{key}"}},"Action":"kinesis:PutRecord*","Resource":"{}"}}]}}"#,
        arn("orders-eu")
    );
    admin
        .put_resource_policy(&arn("orders-eu"), &deny)
        .await
        .expect("put resource policy");
    assert_eq!(
        admin.get_resource_policy(&arn("orders-eu")).await.unwrap(),
        deny
    );
    wait_until(
        Duration::from_secs(10),
        "the resource policy applies on node 3",
        || async { put_one(&user, "orders-eu").await.is_err() },
    )
    .await;
    denied(
        put_one(&user, "orders-eu").await,
        "with an explicit deny in a resource-based policy",
    );
    put(&admin, "orders-eu", "a", 1).await;
    let allow = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{key}"}},"Action":["kinesis:PutRecords","kinesis:ListShards"],"Resource":"{}"}}]}}"#,
        arn("payroll")
    );
    admin
        .put_resource_policy(&arn("payroll"), &allow)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the allow applies on node 3",
        || async { put_one(&user, "payroll").await.is_ok() },
    )
    .await;
    // A policy that cannot be evaluated faithfully is refused when put.
    let err = admin
        .put_resource_policy(
            &arn("orders"),
            &deny.replace("\"Effect\"", "\"Condition\":{},\"Effect\""),
        )
        .await
        .unwrap_err();
    assert_eq!(err.symbol(), Some("INVALID_ARGUMENT"), "{err}");
    admin
        .delete_resource_policy(&arn("orders-eu"))
        .await
        .unwrap();
    assert_eq!(
        admin.get_resource_policy(&arn("orders-eu")).await.unwrap(),
        "{}"
    );

    // A consumer's resource policy, put on the consumer's ARN, decides for calls that name
    // the consumer; the stream's own rights are untouched.
    let consumer = admin.register_consumer("orders", "audit").await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the consumer is readable on node 3",
        || async { user.describe_consumer(&consumer.consumer_arn).await.is_ok() },
    )
    .await;
    let deny_consumer = format!(
        r#"{{"Statement":[{{"Effect":"Deny","Principal":{{"AWS":"{key}"}},"Action":["kinesis:SubscribeToShard","kinesis:DescribeStreamConsumer"],"Resource":"{}"}}]}}"#,
        consumer.consumer_arn
    );
    admin
        .put_resource_policy(&consumer.consumer_arn, &deny_consumer)
        .await
        .expect("put consumer resource policy");
    wait_until(
        Duration::from_secs(10),
        "the consumer's policy applies on node 3",
        || async {
            user.describe_consumer(&consumer.consumer_arn)
                .await
                .is_err()
        },
    )
    .await;
    denied(
        user.describe_consumer(&consumer.consumer_arn).await,
        "with an explicit deny in a resource-based policy",
    );
    denied(
        user.subscribe_to_shard(&consumer.consumer_arn, SHARD, StartPosition::TrimHorizon)
            .await,
        &format!(
            "kinesis:SubscribeToShard on resource: {}",
            consumer.consumer_arn
        ),
    );
    assert_eq!(read_all(&user, "orders").await.len(), 3);
    admin
        .subscribe_to_shard(&consumer.consumer_arn, SHARD, StartPosition::TrimHorizon)
        .await
        .expect("the admin is not named by the deny");

    // The status pages answer only signed requests from a key allowed the cluster actions;
    // the probes stay open for load balancers and kubelets.
    let signer = |key_id: &str, secret: &str| common::SigV4Key {
        key_id: key_id.into(),
        secret: secret.into(),
        region: "us-east-1".into(),
    };
    let (code, body) = cluster.get_as(2, "/v1/node/status", None).unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("MissingAuthenticationTokenException"),
        "{body}"
    );
    let (code, body) = cluster
        .get_as(2, "/v1/node/status", Some(&signer(&key, "wrong")))
        .unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("InvalidSignatureException"), "{body}");
    let (code, body) = cluster
        .get_as(2, "/v1/cluster/status", Some(&signer(&key, &secret)))
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("kinesis:GetClusterStatus"), "{body}");
    assert!(!body.contains("orders"), "a refusal shows nothing: {body}");
    let (code, body) = cluster.get(2, "/v1/cluster/status").unwrap();
    assert_eq!(code, 200, "signed by the admin: {body}");
    assert!(cluster.status(2).unwrap()["groups"].is_array());
    // /metrics names streams too: guarded the same way.
    let (code, body) = cluster.get_as(2, "/metrics", None).unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, body) = cluster
        .get_as(2, "/metrics", Some(&signer(&key, &secret)))
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("orders"), "a refusal shows nothing: {body}");
    let (code, body) = cluster.get(2, "/metrics").unwrap();
    assert_eq!(code, 200, "signed by the admin: {body}");
    assert!(
        body.contains("millrace_stream_records_written_total"),
        "{body}"
    );
    // Or with the metrics token, as Prometheus scrapes; a wrong token is refused, and the
    // token opens nothing else.
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    let (code, body) = cluster
        .get_with(2, "/metrics", &bearer("scrape-token-0123456789"))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("millrace_fsyncs_total"), "{body}");
    let (code, body) = cluster
        .get_with(2, "/metrics", &bearer("scrape-token-012345678X"))
        .unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, body) = cluster
        .get_with(2, "/v1/node/status", &bearer("scrape-token-0123456789"))
        .unwrap();
    assert_eq!(code, 401, "the token is for /metrics only: {body}");
    let _ = std::fs::remove_file(&token_file);
    assert_eq!(cluster.get_as(2, "/healthz", None).unwrap().0, 200);
    assert_eq!(cluster.get_as(2, "/readyz", None).unwrap().0, 200);

    // Listing shows ids, never secrets; a deleted key is refused everywhere.
    let keys = admin.list_access_keys().await.unwrap();
    assert!(keys.iter().any(|k| k.access_key_id == key && k.has_policy));
    assert!(keys
        .iter()
        .any(|k| k.access_key_id == "AKIDADMIN" && k.bootstrap));
    admin.delete_access_key(&key).await.expect("delete key");
    wait_until(
        Duration::from_secs(10),
        "the deleted key is refused on node 3",
        || async {
            user.list_streams()
                .await
                .is_err_and(|e| e.symbol() == Some("UNAUTHENTICATED"))
        },
    )
    .await;
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap();
        assert!(!log.contains(&secret) && !log.contains("admin-secret"));
        // The stores that hold the created keys are the node user's alone.
        for sub in ["meta", "groups"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(node.data_dir.join(sub))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o700, "{sub}");
        }
    }
}

/// Starts a gRPC ListStreams call on a fresh HTTP/2 connection to `addr` whose body stops
/// mid-frame (a frame header announcing 100 bytes, then nothing). Answers the pending response
/// and the body's sender, which must be kept to hold the call open.
async fn stalled_call(addr: &str) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2c, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // The server's SETTINGS bound the streams one connection may open at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while conn.max_concurrent_send_streams() != 1_024 {
        assert!(
            std::time::Instant::now() < deadline,
            "no SETTINGS with 1,024 streams"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut conn).await;
    }
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}/millrace.v1.Millrace/ListStreams"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2c.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 100]), false)
        .unwrap();
    (response, body)
}

#[tokio::test]
async fn overload_stalled_calls_and_fast_keys_are_refused_clearly_and_counted() {
    use millrace_proto::v1 as pb;
    let env = [
        ("MILLRACE_REPLICATION_FACTOR", "1"),
        ("MILLRACE_REQUESTS_IN_FLIGHT_MAX", "2"),
        ("MILLRACE_GRPC_CALL_TIMEOUT", "2s"),
    ];
    let cluster = Cluster::start_with_env("sec-overload", 1, &env).await;
    let addr = cluster.nodes[0].grpc.clone();
    let in_flight = || cluster.status(1).unwrap()["limits"]["requests_in_flight"].as_u64();
    // Two calls whose bodies stall mid-frame fill the node's two slots.
    let stalled = [stalled_call(&addr).await, stalled_call(&addr).await];
    wait_until(
        Duration::from_secs(10),
        "two stalled calls in flight",
        || async { in_flight() == Some(2) },
    )
    .await;
    // A third call is refused at once, with a retryable error that names the limit.
    let mut raw =
        millrace_proto::v1::millrace_client::MillraceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    let status = raw
        .list_streams(pb::ListStreamsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(symbol_of(&status), "UNAVAILABLE", "{status:?}");
    assert!(
        status.message().contains("--requests-in-flight-max"),
        "{status:?}"
    );
    // The stalled calls are ended after the call timeout (2 s), freeing their slots.
    for (response, _body) in stalled {
        let answer = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("a stalled call is answered within 10 s")
            .expect("an HTTP/2 response");
        assert_eq!(
            answer.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"4"[..]),
            "DEADLINE_EXCEEDED: {answer:?}"
        );
    }
    raw.list_streams(pb::ListStreamsRequest::default())
        .await
        .expect("served once the stalled calls are gone");
    let limits = cluster.status(1).unwrap()["limits"].clone();
    assert!(
        limits["requests_refused_in_flight"].as_u64().unwrap() >= 1,
        "{limits}"
    );
    assert!(
        limits["grpc_calls_timed_out"].as_u64().unwrap() >= 2,
        "{limits}"
    );
    drop(cluster);

    // A rate per access key: beyond it, Kinesis's throttling error; the next second, served.
    let env = [
        ("MILLRACE_REPLICATION_FACTOR", "1"),
        ("MILLRACE_ACCESS_KEYS", "AKIDFAST:fast-secret"),
        ("MILLRACE_KEY_REQUESTS_PER_SECOND", "5"),
    ];
    let cluster = Cluster::start_with_env("sec-rate", 1, &env).await;
    let client = keyed_client(&cluster, &[1], "AKIDFAST", "fast-secret");
    let mut refused = None;
    for _ in 0..30 {
        if let Err(e) = client.list_streams().await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("30 calls at once exceed 5 per second");
    assert_eq!(err.symbol(), Some("LIMIT_EXCEEDED"), "{err}");
    assert!(
        err.to_string()
            .contains("Rate exceeded for access key AKIDFAST"),
        "{err}"
    );
    wait_until(Duration::from_secs(5), "the key's rate refills", || async {
        client.list_streams().await.is_ok()
    })
    .await;
    // The status page is signed with the same key, so it too waits for the key's rate.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let limits = loop {
        if let Some(status) = cluster.status(1) {
            break status["limits"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no status page");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        limits["requests_refused_key_rate"].as_u64().unwrap() >= 1,
        "{limits}"
    );
    // The web console takes the key's rate too: past it, 429 (HTTP Basic with the same key).
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("AKIDFAST:fast-secret");
    let header = format!("Authorization: Basic {basic}\r\n");
    let console = || common::http_get_with(cluster.http_addr(1), "/console/state", &header);
    wait_until(Duration::from_secs(5), "the console serves the key", || {
        let served = console().is_some_and(|(code, _)| code == 200);
        async move { served }
    })
    .await;
    let codes: Vec<u16> = (0..30).filter_map(|_| console()).map(|(c, _)| c).collect();
    assert!(
        codes.contains(&429),
        "30 console requests at once exceed 5 per second: {codes:?}"
    );
}
