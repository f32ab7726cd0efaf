//! Connections under stress: WebSocket delivery exactly once while the backlog races new sends,
//! clients that stop reading, byte-bounded GET /messages pages, idle and slow-header
//! connections, the connection cap, and the shutdown deadline.
//!
//! In-process tests use the real server (`crate::helpers::TestServer`); the cap, memory and
//! SIGTERM tests run the built binary (`crate::helpers::Binary`) under an open-file limit. No
//! assertion is on timing: each waits for an outcome with a generous bound and fails only if it
//! never comes.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::{
    addr, expect_closed_by_server, health_on, message_text, proc_status_kb, read_backlog,
    serve_flags, shell_command, ws_connect, ws_open, Binary, TestServer, TestUser, Ws,
};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as Frame;

/// Upper bound for anything the server should do "soon"; never a timing check.
const BOUND: Duration = Duration::from_secs(30);
/// Content of a large message: about 60 KB, under the default 64 KiB limit.
const LARGE: usize = 60_000;

/// Queues `n` messages of about `size` bytes from `from` to `to`, eight senders at a time.
async fn send_many(s: &TestServer, from: &TestUser, to: &TestUser, n: usize, size: usize) {
    let body = "x".repeat(size);
    let path = format!("/messages/{}", from.reg_id);
    let mut pending = futures_util::stream::iter(0..n)
        .map(|_| {
            let content = message_text(to.reg_id, &body);
            s.post(
                &path,
                &from.token,
                json!({"recipient": to.username, "message": content}),
            )
        })
        .buffer_unordered(8);
    while let Some((status, res)) = pending.next().await {
        assert_eq!(status, StatusCode::CREATED, "send: {res}");
    }
}

/// The next text frame as JSON (pings skipped); `None` once the socket ends or is closed.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let frame = timeout(BOUND, ws.next())
            .await
            .expect("no frame from the server in time");
        match frame {
            Some(Ok(Frame::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(other)) => panic!("unexpected frame: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn ws_delivers_each_message_once_when_sends_race_a_large_backlog() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 1, 0, 0).await;
    let bob = s.user_with_device("bob", 2, 0, 0).await;
    // A backlog far larger than the socket buffers: the server is still sending it while the
    // senders below queue more, so those come both in the backlog and as pushes.
    send_many(&s, &alice, &bob, 300, LARGE).await;
    let mut ws = ws_open(&s, &bob).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_many(&s, &alice, &bob, 40, 100).await;

    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    let mut queue_empty = false;
    while seen.len() < 340 || !queue_empty {
        let frame = next_json(&mut ws).await.expect("socket ended early");
        match frame["type"].as_str() {
            Some("queue_empty") => queue_empty = true,
            Some("message") => {
                let id = frame["message"]["id"].as_u64().unwrap();
                if !seen.insert(id) {
                    duplicates.push(id);
                }
            }
            _ => panic!("unexpected frame: {frame}"),
        }
    }
    // Anything still on its way would be a duplicate.
    while let Ok(frame) = timeout(Duration::from_secs(1), next_json(&mut ws)).await {
        match frame {
            Some(f) if f["type"] == "message" => {
                duplicates.push(f["message"]["id"].as_u64().unwrap())
            }
            Some(f) => panic!("unexpected frame: {f}"),
            None => break,
        }
    }
    assert!(duplicates.is_empty(), "ids delivered twice: {duplicates:?}");
}

#[tokio::test]
async fn ws_client_that_stops_reading_is_closed_and_no_longer_counted() {
    let s = TestServer::start_with(&["--no-rate-limit", "--idle-timeout", "2"]).await;
    let alice = s.user_with_device("alice", 1, 0, 0).await;
    let bob = s.user_with_device("bob", 2, 0, 0).await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "queue_empty");
    assert_eq!(s.app.hub.connections(), 1);
    // bob reads nothing more; far more than the socket buffers hold is pushed at him.
    send_many(&s, &alice, &bob, 300, LARGE).await;
    crate::helpers::wait_for_open_sockets(&s, 0, BOUND).await;
    // The messages stay queued for the next connection.
    let (status, page) = s.get("/messages/2?limit=1", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_newer_connection_closes_one_stuck_in_its_backlog() {
    let s = TestServer::start_with(&["--no-rate-limit", "--idle-timeout", "600"]).await;
    let alice = s.user_with_device("alice", 1, 0, 0).await;
    let bob = s.user_with_device("bob", 2, 0, 0).await;
    send_many(&s, &alice, &bob, 300, LARGE).await;
    let mut stuck = ws_open(&s, &bob).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut newer = ws_open(&s, &bob).await;
    // The stuck one ends without its backlog finished: no `queue_empty` before the close.
    while let Some(frame) = next_json(&mut stuck).await {
        assert_eq!(
            frame["type"], "message",
            "the older socket went on to {frame}"
        );
    }
    let mut count = 0;
    while let Some(frame) = next_json(&mut newer).await {
        if frame["type"] == "queue_empty" {
            break;
        }
        count += 1;
    }
    assert_eq!(count, 300);
    crate::helpers::wait_for_open_sockets(&s, 1, BOUND).await;
}

// ---------------------------------------------------------------------------------------------
// GET /messages

#[tokio::test]
async fn get_messages_pages_are_bounded_by_bytes_and_stay_oldest_first() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 1, 0, 0).await;
    let bob = s.user_with_device("bob", 2, 0, 0).await;
    send_many(&s, &alice, &bob, 40, LARGE).await;
    let (status, page) = s.get("/messages/2", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    let first: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    // 40 messages of 60 KB are 2.4 MB; a page holds about 1 MiB of them.
    assert!(
        (1..40).contains(&first.len()),
        "a page of {} large messages",
        first.len()
    );
    assert!(first.windows(2).all(|w| w[0] < w[1]), "not oldest first");
    let (status, _) = s.delete("/messages/2", &bob.token, json!(first)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, next) = s.get("/messages/2", &bob.token).await;
    let next_first = next[0]["id"].as_u64().unwrap();
    assert!(next_first > *first.last().unwrap());
}

// ---------------------------------------------------------------------------------------------
// Idle and slow connections (raw TCP)

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let s = TestServer::start_with(&["--idle-timeout", "1", "--header-read-timeout", "600"]).await;
    let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
    expect_closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_header_read_timeout() {
    let s = TestServer::start_with(&["--idle-timeout", "600", "--header-read-timeout", "1"]).await;
    let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = timeout(BOUND, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    expect_closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn a_request_head_sent_byte_by_byte_is_cut_at_the_header_read_timeout() {
    let s = TestServer::start_with(&["--idle-timeout", "600", "--header-read-timeout", "2"]).await;
    let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a trickled header was still being read after {BOUND:?}"
        );
        if stream.write_all(b"X").await.is_err() {
            return;
        }
        match timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary: connection cap under a low open-file limit, SIGTERM deadline

/// The binary started under `ulimit -n <fds>` with the test flags and `flags`.
async fn binary_with_fd_limit(dir: &std::path::Path, fds: u32, flags: &[&str]) -> Binary {
    let mut cmd = shell_command(&format!("ulimit -n {fds}"));
    cmd.arg("--data-dir").arg(dir);
    serve_flags(&mut cmd, flags);
    Binary::spawn(cmd).await
}

#[tokio::test]
async fn health_answers_while_more_idle_sockets_are_open_than_the_fd_limit_allows() {
    let dir = tempfile::tempdir().unwrap();
    // Every socket comes from 127.0.0.1: the per-address cap is off to reach the whole one.
    let flags = [
        "--idle-timeout",
        "2",
        "--header-read-timeout",
        "2",
        "--max-connections-per-ip",
        "0",
    ];
    let server = binary_with_fd_limit(dir.path(), 128, &flags).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(server.addr()).await.expect("connect"));
    }
    let (status, body) = server.call("GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(idle);
}

#[tokio::test]
async fn sigterm_with_a_half_sent_request_exits_within_the_shutdown_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = binary_with_fd_limit(
        dir.path(),
        1024,
        &[
            "--shutdown-timeout",
            "1",
            "--header-read-timeout",
            "600",
            "--idle-timeout",
            "600",
        ],
    )
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"POST /auth/users HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn get_messages_readers_that_never_read_do_not_pin_their_queues_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = binary_with_fd_limit(dir.path(), 1024, &[]).await;
    let alice = server.user_with_device("alice", 1, 0, 0).await;
    let bob = server.user_with_device("bob", 2, 0, 0).await;
    let body = "x".repeat(LARGE);
    let mut sends = futures_util::stream::iter(0..300)
        .map(|_| {
            let content = message_text(bob.reg_id, &body);
            let send = json!({"recipient": "bob", "message": content});
            server.post("/messages/1", &alice.token, send)
        })
        .buffer_unordered(8);
    while let Some((status, body)) = sends.next().await {
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let rss = || proc_status_kb(server.pid(), "VmRSS:") * 1024;
    let before = rss();
    assert!(before > 0, "no VmRSS for the server process");
    // Ten clients ask for bob's 18 MB queue and never read the answer.
    let request = format!(
        "GET /messages/2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        bob.token
    );
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // Let the server read the queue and write what the sockets take; then it can only wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss();
    eprintln!("server RSS before {before} B, with 10 stalled readers {after} B");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 30 << 20,
        "10 stalled GET /messages readers grew the server by {} MB",
        grown >> 20
    );
    drop(stalled);
}

/// Opens `users`' live sockets on the binary, each read up to `queue_empty` and pinged until
/// its pong comes back: the server has read from every one of them.
async fn idle_sockets(server: &Binary, users: &[TestUser]) -> Vec<Ws> {
    let mut sockets = Vec::new();
    for user in users {
        let url = server.ws_url(&format!("/messages/{}/ws", user.reg_id));
        let mut ws = ws_connect(&url, &user.token).await;
        read_backlog(&mut ws).await;
        ws.send(Frame::Ping(vec![1].into())).await.expect("ping");
        loop {
            match timeout(BOUND, ws.next()).await.expect("no pong in time") {
                Some(Ok(Frame::Pong(_))) => break,
                Some(Ok(Frame::Ping(_))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
        sockets.push(ws);
    }
    sockets
}

#[tokio::test]
async fn idle_websockets_hold_a_few_kib_each_not_a_128_kib_read_buffer() {
    const WARM: usize = 20;
    const IDLE: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--max-connections-per-ip", "0"];
    let server = binary_with_fd_limit(dir.path(), 1024, &flags).await;
    let mut users = futures_util::stream::iter(0..WARM + IDLE)
        .map(|i| {
            let server = &server;
            async move {
                let name = format!("idle{i}");
                server.user_with_device(&name, i as u32 + 1, 0, 0).await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let rss = || proc_status_kb(server.pid(), "VmRSS:") * 1024;
    // The first sockets warm up the server's allocator and task pools.
    let idle = users.split_off(WARM);
    let warm = idle_sockets(&server, &users).await;
    let before = rss();
    assert!(before > 0, "no VmRSS for the server process");
    let open = idle_sockets(&server, &idle).await;
    let per_socket = rss().saturating_sub(before) / IDLE as u64;
    eprintln!("server RSS before {before} B, {per_socket} B more per idle WebSocket");
    // tungstenite's default read buffer alone, zero-filled by the first read, is 128 KiB.
    assert!(
        per_socket < 48 << 10,
        "each idle WebSocket grew the server by {} KiB",
        per_socket >> 10
    );
    drop((warm, open));
}

#[tokio::test]
async fn beyond_max_connections_new_ones_wait_while_open_ones_are_served() {
    let s = TestServer::start_with(&[
        "--max-connections",
        "2",
        "--idle-timeout",
        "600",
        "--header-read-timeout",
        "600",
    ])
    .await;
    let mut a = TcpStream::connect(addr(&s)).await.unwrap();
    let mut b = TcpStream::connect(addr(&s)).await.unwrap();
    assert!(health_on(&mut a, BOUND)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert!(health_on(&mut b, BOUND)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    assert_eq!(
        health_on(&mut c, Duration::from_secs(1)).await,
        None,
        "a third connection was served at a cap of 2"
    );
    // The open ones are still served while the third waits.
    assert!(health_on(&mut b, BOUND)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    drop(a);
    let mut buf = [0u8; 1024];
    let n = timeout(BOUND, c.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
