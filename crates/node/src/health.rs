//! `millrace health`: asks the node on this machine whether it is up (`/healthz`) or ready
//! (`/readyz`), for container health checks and probes. Plain HTTP/1.0 over a socket: a probe
//! must not need more than the binary itself.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a probe waits for the node, connecting and answering each.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Ok when the node at `http_addr` answers 200 to `/healthz` (or `/readyz` if `ready`).
pub fn check(http_addr: SocketAddr, ready: bool) -> Result<(), String> {
    let addr = reachable(http_addr);
    let path = if ready { "/readyz" } else { "/healthz" };
    let mut stream = TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT)
        .map_err(|e| format!("node at {addr} does not answer: {e}"))?;
    stream
        .set_read_timeout(Some(HEALTH_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HEALTH_TIMEOUT)))
        .map_err(|e| format!("node at {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("node at {addr}: {e}"))?;
    // The status line and a short body are all a probe needs; never read without bound.
    let mut answer = Vec::with_capacity(512);
    stream
        .take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("node at {addr}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
        Err(format!("node at {addr}: {path} answered {status:?} {body}"))
    }
}

/// A wildcard listening address (0.0.0.0, ::) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot HTTP server answering `reply`; returns its address.
    fn answer_once(reply: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the whole request first: closing with unread bytes would reset the
            // connection before the client reads the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(reply.as_bytes());
        });
        addr
    }

    #[test]
    fn ok_only_on_200() {
        let up = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert_eq!(check(up, false), Ok(()));
        let not_ready = answer_once("HTTP/1.1 503 Service Unavailable\r\n\r\nno metadata leader\n");
        let e = check(not_ready, true).unwrap_err();
        assert!(
            e.contains("/readyz") && e.contains("503") && e.contains("no metadata leader"),
            "{e}"
        );
    }

    #[test]
    fn a_closed_port_fails() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is dropped: nothing listens there any more.
        assert!(check(port, false).unwrap_err().contains("does not answer"));
    }

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        let a: SocketAddr = "0.0.0.0:4567".parse().unwrap();
        assert_eq!(reachable(a), "127.0.0.1:4567".parse().unwrap());
        let a: SocketAddr = "[::]:4567".parse().unwrap();
        assert_eq!(reachable(a), "[::1]:4567".parse().unwrap());
    }
}
