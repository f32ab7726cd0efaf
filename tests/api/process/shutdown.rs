//! Lifecycle of the built binary: a graceful restart keeps the JWT secret and the tokens, a
//! second process on the same data dir fails fast, and SIGTERM ends the process even with a
//! WebSocket open.

use crate::helpers::{
    binary_command, file_mode, read_backlog, run, serve_flags, ws_connect, Binary, BINARY_BOUND,
};
use futures_util::StreamExt;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_survives_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &[]).await;
    let id = server.register("Grace").await;
    let token = server.login("grace").await;
    let (status, me) = server.get("/auth/users/me", &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");

    let secret_path = dir.path().join("jwt_secret");
    assert!(secret_path.is_file(), "no jwt_secret in the data dir");
    assert_eq!(file_mode(&secret_path), 0o600, "jwt_secret mode");
    let secret = std::fs::read(&secret_path).unwrap();

    // The client still holds an idle keep-alive connection: shutdown must not wait on it.
    server.stop().await;

    let server = Binary::start(dir.path(), &[]).await;
    assert_eq!(
        std::fs::read(&secret_path).unwrap(),
        secret,
        "the JWT secret changed across a restart"
    );
    let (status, me) = server.get("/auth/users/me", &token).await;
    assert_eq!(status, StatusCode::OK, "old token after restart: {me}");
    assert_eq!(me["username"], "Grace");
    assert_eq!(me["id"], id);
    let token2 = server.login("GRACE").await;
    let (status, me) = server.get("/auth/users/me", &token2).await;
    assert_eq!(status, StatusCode::OK, "new token after restart: {me}");
    assert_eq!(me["id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_same_data_dir_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &[]).await;

    let mut second = binary_command(dir.path());
    serve_flags(&mut second, &[]);
    let second = run(second, None);
    assert!(
        second.status.and_then(|s| s.code()).is_some_and(|c| c != 0),
        "second process on a locked data dir: {second:?}"
    );
    let stderr = second.stderr;
    assert!(
        stderr.contains("in use"),
        "stderr does not say the data dir is in use:\n{stderr}"
    );
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "stderr does not name the data dir:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The first server is unharmed.
    let (status, body) = server.call("GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.register("still_serving").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_websocket_still_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(dir.path(), &[]).await;
    let user = server.user_with_device("wsuser", 4444, 0, 0).await;

    let mut ws = ws_connect(&server.ws_url("/messages/4444/ws"), &user.token).await;
    // The session is live once the (empty) backlog has been sent.
    assert!(read_backlog(&mut ws).await.is_empty());

    let status = server.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM with an open WebSocket: {status}\n{}",
        server.logs()
    );
    // The client sees its socket end (a close frame, an error or the end of the stream).
    let ended = tokio::time::timeout(BINARY_BOUND, async {
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "WebSocket still open after the server exited"
    );
    let _ = ws.close(None).await;
}

/// A SIGTERM that comes while the server is still starting (the unit is stopped during a slow
/// start) stops it gracefully (exit 0), not by the signal's default action.
#[tokio::test]
async fn sigterm_during_start_is_a_graceful_stop() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = binary_command(dir.path());
    serve_flags(&mut cmd, &[]);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    // The first line the binary logs: it is starting, not yet listening.
    let first = lines.next().expect("a log line").expect("utf-8");
    assert!(first.contains("starting"), "{first}");
    // SAFETY: kill(2) with our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let drained = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + BINARY_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let log = drained.join().unwrap_or_default().join("\n");
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
}
