//! The accept loop and connector against each other over 127.0.0.1: who gets in, what the
//! server learns of them, and that a rotation of the files is picked up by new connections.

use std::sync::Arc;
use std::time::Duration;

use millrace_security::dev_pki::{DevPki, NodeCert};
use millrace_security::incoming::{accept_loop, AcceptCounters, AcceptLimits};
use millrace_security::{ClientTls, Conn, NodeTls, TlsConnector, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

struct Node {
    addr: std::net::SocketAddr,
    conns: tokio::sync::mpsc::Receiver<Conn>,
    counters: Arc<AcceptCounters>,
    tls: Arc<NodeTls>,
    dir: tempfile::TempDir,
}

async fn node(pki: &DevPki, id: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let paths = pki.write(dir.path()).unwrap();
    let (_, cert, key) = paths.nodes.iter().find(|n| n.0 == id).unwrap().clone();
    let tls = NodeTls::load(TlsFiles {
        cert,
        key,
        ca: paths.ca,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(AcceptCounters::default());
    let limits = AcceptLimits {
        max_connections: 16,
        handshake_timeout: Duration::from_secs(10),
    };
    let conns = accept_loop(listener, Some(tls.clone()), limits, counters.clone());
    Node {
        addr,
        conns,
        counters,
        tls,
        dir,
    }
}

fn uri(addr: std::net::SocketAddr) -> http::Uri {
    format!("http://{addr}").parse().unwrap()
}

/// The next accepted connection, echoing one line in the background; returns what the server
/// knew of the peer.
async fn serve_one(n: &mut Node) -> millrace_security::PeerInfo {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), n.conns.recv())
        .await
        .expect("a connection within 5 s")
        .unwrap();
    let info = conn.peer().clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(&buf).await.unwrap();
    });
    info
}

async fn echo(mut io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) -> Vec<u8> {
    io.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    io.read_exact(&mut buf).await.unwrap();
    buf.to_vec()
}

#[tokio::test]
async fn a_peer_proves_its_node_id_and_a_client_needs_no_certificate() {
    let pki = DevPki::generate(&[1, 2]).unwrap();
    let mut server = node(&pki, 1).await;
    let peer = node(&pki, 2).await;

    // Node 2 connects as a peer: its certificate names node 2.
    let mut c = TlsConnector::new(peer.tls.clone());
    let (io, info) = tokio::join!(c.call(uri(server.addr)), serve_one(&mut server));
    assert_eq!(echo(io.unwrap().into_inner()).await, b"hello");
    assert!(info.tls);
    assert_eq!(info.node_id, Some(2));

    // A client that trusts the CA and shows no certificate gets in, as nobody in particular.
    let client = ClientTls::with_ca_file(&server.dir.path().join("ca.pem")).unwrap();
    let (io, info) = tokio::join!(
        client.connector().call(uri(server.addr)),
        serve_one(&mut server)
    );
    assert_eq!(echo(io.unwrap().into_inner()).await, b"hello");
    assert_eq!(info.node_id, None);
}

#[tokio::test]
async fn strangers_are_refused_both_ways() {
    let pki = DevPki::generate(&[1]).unwrap();
    let other = DevPki::generate(&[9]).unwrap();
    let server = node(&pki, 1).await;

    // A client that does not trust the cluster CA refuses the server.
    let dir = tempfile::tempdir().unwrap();
    let paths = other.write(dir.path()).unwrap();
    let stranger = ClientTls::with_ca_file(&paths.ca).unwrap();
    let err = stranger
        .connector()
        .call(uri(server.addr))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );

    // A node of another cluster (another CA) is refused by the server.
    let foreign = node(&other, 9).await;
    let mut c = TlsConnector::new(foreign.tls.clone());
    let r = async {
        let io = c.call(uri(server.addr)).await?;
        let mut io = io.into_inner();
        io.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await
    }
    .await;
    assert!(
        r.is_err(),
        "a certificate from another CA must not get through"
    );

    // Plaintext on the TLS port gets nothing back.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"\0\0"),
        "no HTTP/2 frame may answer plaintext"
    );

    let c = &server.counters;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c
        .handshakes_failed
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three failed handshakes counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rotated_files_are_used_by_new_connections_and_old_ones_keep_working() {
    let pki = DevPki::generate(&[1, 2]).unwrap();
    let mut server = node(&pki, 1).await;
    let peer = node(&pki, 2).await;
    let mut c = TlsConnector::new(peer.tls.clone());

    let (old, _) = tokio::join!(c.call(uri(server.addr)), async {
        tokio::time::timeout(Duration::from_secs(5), server.conns.recv())
            .await
            .unwrap()
            .unwrap()
    });
    let mut old = old.unwrap().into_inner();

    // Rotate node 1's certificate: new connections must see the new one.
    let fresh = pki.issue_node(1, &["localhost", "127.0.0.1"]).unwrap();
    let before = server.tls.server_config();
    fresh.write(server.dir.path()).unwrap();
    assert!(server.tls.reload_if_changed().unwrap());
    assert!(
        !server.tls.reload_if_changed().unwrap(),
        "nothing changed since"
    );
    assert!(!Arc::ptr_eq(&before, &server.tls.server_config()));
    let (io, info) = tokio::join!(c.call(uri(server.addr)), serve_one(&mut server));
    let io = io.unwrap();
    let presented = io.inner().get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        presented,
        millrace_security::dev_pki::der_of(&fresh.cert_pem)
    );
    assert_eq!(echo(io.into_inner()).await, b"hello");
    assert_eq!(info.node_id, Some(2));

    // The connection made before the rotation still carries data.
    old.write_all(b"still").await.unwrap();
    old.flush().await.unwrap();
}

#[tokio::test]
async fn a_broken_rotation_keeps_the_old_settings() {
    let pki = DevPki::generate(&[1]).unwrap();
    let server = node(&pki, 1).await;
    let before = server.tls.server_config();
    std::fs::write(server.dir.path().join("node-1.pem"), "half a file").unwrap();
    let err = server.tls.reload_if_changed().unwrap_err().to_string();
    assert!(err.contains("node-1.pem"), "{err}");
    assert!(Arc::ptr_eq(&before, &server.tls.server_config()));
}

#[tokio::test]
async fn a_node_certificate_must_name_its_own_node() {
    let pki = DevPki::generate(&[1]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = pki.write(dir.path()).unwrap();
    let (_, cert, key) = paths.nodes[0].clone();
    let files = TlsFiles {
        cert,
        key,
        ca: paths.ca,
    };
    let err = NodeTls::load_for_node(files.clone(), 2)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("names node 1, not this node (2)"), "{err}");
    let tls = NodeTls::load_for_node(files, 1).unwrap();
    // A rotation to a certificate of another node is refused; the old one stays.
    let before = tls.server_config();
    // Node 3's certificate and key, written where node 1's are.
    let node3 = pki.issue_node(3, &["localhost"]).unwrap();
    NodeCert {
        node_id: 1,
        ..node3
    }
    .write(dir.path())
    .unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("names node 3"), "{err}");
    assert!(Arc::ptr_eq(&before, &tls.server_config()));
}
