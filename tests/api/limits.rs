//! What one client can hold of the server: HTTP/1.1 only (no cleartext HTTP/2 streams), its share
//! of the connections, how long one request body may take, and the memory all bodies may buffer.
//! Raw TCP against the real server; every wait is bounded and none is a timing assertion.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::helpers::{
    addr, connect_from, expect_closed_by_server, health_on, TestServer, RAW_BOUND,
};

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

// ---------------------------------------------------------------------------------------------
// Connections per client address

/// Flags that leave only the limit under test to close a connection.
const PATIENT: [&str; 4] = ["--idle-timeout", "600", "--header-read-timeout", "600"];

async fn start_with(flags: &[&str]) -> TestServer {
    let mut all = vec!["--no-rate-limit"];
    all.extend_from_slice(&PATIENT);
    all.extend_from_slice(flags);
    TestServer::start_with(&all).await
}

#[tokio::test]
async fn one_address_at_its_connection_cap_is_refused_while_other_addresses_are_served() {
    let s = start_with(&["--max-connections-per-ip", "4"]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        let answer = health_on(&mut c, RAW_BOUND).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        held.push(c);
    }
    // The fifth from the same address is closed at once, not left waiting.
    let mut fifth = TcpStream::connect(addr(&s)).await.unwrap();
    expect_closed_by_server(&mut fifth).await;
    let refused = &s.app.metrics.refused_connections;
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Another host (127.0.0.2) is served meanwhile.
    let mut other = connect_from(&s, "127.0.0.2").await;
    let answer = health_on(&mut other, RAW_BOUND).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // A connection closed by the client frees its place.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + RAW_BOUND;
    loop {
        let mut again = TcpStream::connect(addr(&s)).await.unwrap();
        if let Some(answer) = health_on(&mut again, RAW_BOUND).await {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection never gave its place back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_trusted_proxy_is_not_held_to_the_per_address_cap() {
    let s = start_with(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.1",
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        let answer = health_on(&mut c, RAW_BOUND).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        held.push(c);
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies: the deadline and the buffer budget

/// The start of a registration whose body (`length` bytes) is still on its way.
async fn unfinished_upload(s: &TestServer, length: usize) -> TcpStream {
    let mut c = TcpStream::connect(addr(s)).await.unwrap();
    let head = format!(
        "POST /auth/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{\"username\": \""
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c
}

#[tokio::test]
async fn a_body_trickled_past_the_body_timeout_is_answered_408_and_closed() {
    let s = start_with(&["--body-timeout", "1"]).await;
    let mut c = unfinished_upload(&s, 10_000).await;
    // One byte at a time, each well inside the idle timeout: only the body deadline can end it.
    let deadline = tokio::time::Instant::now() + RAW_BOUND;
    let mut buf = [0u8; 1024];
    let n = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a trickled body was still being read after {RAW_BOUND:?}"
        );
        let _ = c.write_all(b"a").await;
        match timeout(std::time::Duration::from_millis(200), c.read(&mut buf)).await {
            Ok(Ok(n)) => break n,
            Ok(Err(e)) => panic!("closed without an answer: {e}"),
            Err(_) => continue,
        }
    };
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    expect_closed_by_server(&mut c).await;
}

#[tokio::test]
async fn bodies_beyond_the_buffer_budget_are_refused_503_until_it_frees() {
    let s = start_with(&[
        "--max-body-bytes",
        "100000",
        "--body-buffer-bytes",
        "100000",
    ])
    .await;
    let held = unfinished_upload(&s, 100_000).await;
    // Once the unfinished upload holds the whole budget, another body is refused, not buffered.
    let answer = until_status(&s, |status| status == 503).await;
    assert_eq!(answer.headers()["retry-after"], "1");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
    // The upload's connection gone, its share is back.
    drop(held);
    let answer = until_status(&s, |status| status != 503).await;
    assert_eq!(answer.status(), 400);
}

/// Sends a small malformed registration until its answer's status passes `wanted`.
async fn until_status(s: &TestServer, wanted: impl Fn(u16) -> bool) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + RAW_BOUND;
    loop {
        let answer = s
            .http
            .post(s.url("/auth/users"))
            .header("content-type", "application/json")
            .body("{\"username\"")
            .send()
            .await
            .expect("request");
        if wanted(answer.status().as_u16()) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} after {RAW_BOUND:?}",
            answer.status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
