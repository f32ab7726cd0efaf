//! Raw TCP against the server, for what a well-behaved HTTP client never does: connections that
//! send nothing, trickled requests, a foreign protocol, and clients bound to other loopback
//! addresses (Linux answers on all of 127/8) to stand for other hosts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use super::TestServer;

/// Upper bound for anything the server should do "soon"; never a timing check.
pub const RAW_BOUND: Duration = Duration::from_secs(30);

/// The server's `IP:PORT`.
pub fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// A connection to `s` from the local address `from` (e.g. `127.0.0.2`).
pub async fn connect_from(s: &TestServer, from: &str) -> TcpStream {
    let local: IpAddr = from.parse().expect("local address");
    let server: SocketAddr = addr(s).parse().expect("server address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    socket.connect(server).await.expect("connect")
}

/// Reads until the server closes the connection; panics if it is still open after the bound.
pub async fn expect_closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + RAW_BOUND;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {RAW_BOUND:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `GET /health` on `stream` and waits (up to `wait`) for the start of an answer.
pub async fn health_on(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return None;
    }
    let mut buf = [0u8; 1024];
    match timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}
