//! Operations: operator commands (always the real binary, reaching a running server over
//! `<data-dir>/admin.sock` or opening a stopped data dir itself), backups and restores,
//! attachments in `stats`, `fsck` and backups, invite-only and closed registration, the per-IP limit behind a trusted proxy, and the
//! Prometheus metrics and access log.
//!
//! Tests that run the binary against an in-process server use a multi-thread runtime and run
//! the command off the runtime threads (`helpers::operator`), so the server keeps answering.

mod backup;
mod blob_store;
mod linked_backup;
mod metrics;
mod migrate;
mod operator;
mod prometheus;
mod proxy;
mod registration;
mod restore;
mod round_trips;

use std::collections::HashMap;
use std::path::Path;

use crate::helpers::{bare_command, feed_text, run, Api, Binary, Run, TestServer, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `requester` pops a bundle of `target`: the one-time EC and Kyber key ids handed out.
/// Serves the server's `/metrics` on a listener of its own, as `--metrics-listen` does: its URL,
/// and the task to abort when done.
async fn serve_metrics(s: &TestServer) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let app = s.app.clone();
    let task = tokio::spawn(async move {
        signal_server::server::serve_metrics(listener, app).await;
    });
    (url, task)
}

async fn pop_bundle(
    s: &impl Api,
    requester: &TestUser,
    target: &TestUser,
) -> (Option<u64>, Option<u64>) {
    let (status, bundle) = s
        .get(
            &format!("/prekeybundle/{}/{}", target.username, requester.reg_id),
            &requester.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "bundle: {bundle}");
    let pre = bundle["preKey"]["keyId"].as_u64();
    // The last-resort Kyber key (id 999999 in the harness) is never removed.
    let kyber = bundle["kyberPreKey"]["keyId"]
        .as_u64()
        .filter(|id| *id != 999_999);
    (pre, kyber)
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["message"].is_string(), "error without message: {body}");
}

/// `POST /auth/users` with `body`, no token.
async fn register(s: &TestServer, body: Value) -> (StatusCode, Value) {
    s.call("POST", "/auth/users", None, Some(&body)).await
}

async fn try_login(s: &TestServer, username: &str, password: &str) -> (StatusCode, Value) {
    let creds = json!({"username": username, "password": password});
    s.call("POST", "/auth/jwt/create", None, Some(&creds)).await
}

/// The first line `invites --count 1` printed: the invite token.
fn first_line(run: &Run) -> String {
    let line = run.stdout.lines().next();
    line.expect("a token").trim().to_string()
}

/// `stats` as a map.
fn stats_of(run: &Run) -> HashMap<String, u64> {
    run.stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `users list` rows as username → (id, email, device, queued).
fn users_of(run: &Run) -> HashMap<String, (u64, String, String, u64)> {
    let mut lines = run.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("id\tusername\temail\tdevice\tqueued"),
        "{}",
        run.stdout
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "row {l:?}");
            (
                f[1].to_string(),
                (
                    f[0].parse().expect("id"),
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].parse().expect("queued"),
                ),
            )
        })
        .collect()
}

/// `signal-server <args>` (the data dir among them, anywhere) that must succeed; its stdout.
fn cli_ok(args: &[&str], stdin: Option<&str>) -> String {
    cli(args, stdin).ok().stdout
}

/// `signal-server <args>` that must fail; its stderr.
fn cli_err(args: &[&str], stdin: Option<&str>) -> String {
    cli(args, stdin).err()
}

fn cli(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = bare_command();
    cmd.args(args);
    run(cmd, stdin.map(feed_text))
}

/// An operator-facing error is a sentence: no Rust debug strings, no JSON.
fn assert_plain(stderr: &str) {
    for debug in ["Corrupt(", "Db(", "Some(", "{\"", "Os {"] {
        assert!(!stderr.contains(debug), "debug text in {stderr:?}");
    }
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("signal-server: "), "{stderr:?}");
}

/// A data dir holding a database, made the way an operator makes one: by starting the server.
async fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Binary::start(dir.path(), &[]).await.stop().await;
    dir
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// Copies directory `from` to `to` (replacing it), as an operator copies a blob store.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success(), "cp -a {from:?} {to:?}");
}

/// The counts a successful `restore` printed (`restored {...}`).
fn restore_summary(run: &Run) -> Value {
    assert!(run.success(), "restore failed: {run:?}");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("restored "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no restore summary in {:?}", run.stdout))
}
