//! What one client can hold of the server: HTTP/1.1 only (no cleartext HTTP/2 streams), its share
//! of the connections, how long one request body may take, and the memory all bodies may buffer.
//! Raw TCP against the real server; every wait is bounded and none is a timing assertion.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::helpers::{addr, TestServer, RAW_BOUND};

/// The HTTP/2 connection preface of a client with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 0x4, no flags, stream 0.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

#[tokio::test]
async fn cleartext_http2_gets_no_http2_answer() {
    let s = TestServer::start().await;
    let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    stream.write_all(&H2_SETTINGS).await.unwrap();
    let mut buf = [0u8; 64];
    let n = match timeout(RAW_BOUND, stream.read(&mut buf)).await {
        Err(_) => panic!("no answer and no close for {RAW_BOUND:?}"),
        Ok(Err(_)) => 0,
        Ok(Ok(n)) => n,
    };
    // Closed, or refused in HTTP/1 terms; an HTTP/2 server would answer with its SETTINGS.
    assert!(
        n == 0 || buf[..n].starts_with(b"HTTP/1.1 4"),
        "answered the HTTP/2 preface with {:?}",
        &buf[..n]
    );
}
