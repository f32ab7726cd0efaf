//! Steps the operations, fault and stress tests share on an in-process server: a send that must
//! succeed, the ids of a queue, a config on an existing data dir, and a stop that waits until
//! the database is closed (so that the binary can open it next).

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::Config;

use super::{message_text, BinaryApi, TestServer, TestUser, BINARY_BOUND};

/// The JSON calls the shared steps make, on a server in-process or the binary.
pub trait Api {
    fn get(&self, path: &str, token: &str) -> impl Future<Output = (StatusCode, Value)>;
    fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> impl Future<Output = (StatusCode, Value)>;
}

impl Api for TestServer {
    fn get(&self, path: &str, token: &str) -> impl Future<Output = (StatusCode, Value)> {
        TestServer::get(self, path, token)
    }

    fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> impl Future<Output = (StatusCode, Value)> {
        TestServer::post(self, path, token, body)
    }
}

impl Api for BinaryApi {
    fn get(&self, path: &str, token: &str) -> impl Future<Output = (StatusCode, Value)> {
        BinaryApi::get(self, path, token)
    }

    fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> impl Future<Output = (StatusCode, Value)> {
        BinaryApi::post(self, path, token, body)
    }
}

/// A successful send from `from` to `to`; the message id.
pub async fn deliver(s: &impl Api, from: &TestUser, to: &TestUser, body: &str) -> u64 {
    let (status, res) = s
        .post(
            &format!("/messages/{}", from.reg_id),
            &from.token,
            json!({"recipient": to.username, "message": message_text(to.reg_id, body)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "send: {res}");
    res["id"].as_u64().expect("message id")
}

/// The ids of a `GET /messages` answer, in order.
pub fn message_ids(queue: &Value) -> Vec<u64> {
    queue
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["id"].as_u64().expect("id"))
        .collect()
}

/// A config on `dir` built from command-line `args` (after `--data-dir DIR`).
pub fn config_on(dir: &Path, args: &[&str]) -> Config {
    let dir = dir.display().to_string();
    let head = ["signal-server", "--data-dir", &dir];
    <Config as clap::Parser>::parse_from(head.iter().chain(args))
}

/// Stops an in-process server and waits (bounded) until its database is closed: background
/// tasks of a stopped server drop their handles shortly after `stop()`.
pub async fn stop_closed(s: TestServer) -> tempfile::TempDir {
    let dir = s.stop().await;
    if super::on_postgres() {
        return dir;
    }
    let path = dir.path().join("db").join("db");
    let deadline = Instant::now() + BINARY_BOUND;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        if file.is_ok_and(|f| f.try_lock().is_ok()) {
            return dir;
        }
        assert!(
            Instant::now() < deadline,
            "{} is still open after {BINARY_BOUND:?}",
            path.display()
        );
        // Yield to the runtime: aborted tasks of the stopped server drop their handles there.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
