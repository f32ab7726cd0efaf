//! Concurrency against the real server: requests of one user that race each other (uploads and
//! sends against a device delete, a device create against the user's delete) must leave no
//! record behind that no device or user can reach, as the totals of `stats` show. Bounded: a few
//! hundred requests per test, no timing assertions.

use std::future::Future;

use crate::helpers::{ec_prekeys, message_text, TestServer, TestUser};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::storage::Totals;

/// Rounds of each race: the window is a few sled operations wide, so it takes many tries.
const ROUNDS: usize = 40;

/// Totals as `stats` reports them (counted once, then kept by the write verbs).
async fn totals(s: &TestServer) -> Totals {
    s.app.storage.count_totals().await.expect("count");
    s.app.storage.totals().await.expect("totals")
}

async fn recreate_device(s: &TestServer, user: &TestUser) {
    let body = user.device_body(1, 0, 0, true);
    let (status, res) = s
        .post(&format!("/device/{}", user.reg_id), &user.token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "create device: {res}");
}

async fn delete_device(s: &TestServer, user: &TestUser) -> StatusCode {
    let path = format!("/device/{}", user.reg_id);
    s.call("DELETE", &path, Some(&user.token), None).await.0
}

/// Sends `requests` while `user`'s device is deleted: the delete succeeds, and each request
/// either got in before it (`ok`) or was refused for want of a device.
async fn race_device_delete(
    s: &TestServer,
    user: &TestUser,
    requests: impl IntoIterator<Item = impl Future<Output = (StatusCode, Value)>>,
    ok: StatusCode,
    round: usize,
) {
    let (answers, deleted) = tokio::join!(join_all(requests), delete_device(s, user));
    assert_eq!(deleted, StatusCode::NO_CONTENT, "round {round}");
    for (status, body) in answers {
        assert!(
            status == ok || body["code"] == "no_device",
            "round {round}: {status} {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_racing_a_device_delete_leave_no_keys_behind() {
    let s = TestServer::start().await;
    let u = s.user_with_device("racer", 21, 0, 0).await;
    for round in 0..ROUNDS {
        let uploads = (0..4u32).map(|i| {
            // Four uploads of 24 keys stay under the default cap of 100.
            let first = (round as u32) * 1000 + i * 100 + 1;
            s.post("/prekeys/21", &u.token, ec_prekeys(first..first + 24))
        });
        race_device_delete(&s, &u, uploads, StatusCode::OK, round).await;
        // No device anywhere: no key may be left in stock, counted or not.
        assert_eq!(
            totals(&s).await.prekeys,
            0,
            "round {round}: keys left behind"
        );
        recreate_device(&s, &u).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_racing_a_device_delete_leave_no_messages_behind() {
    let s = TestServer::start().await;
    let from = s.user_with_device("sender", 31, 0, 0).await;
    let to = s.user_with_device("target", 32, 0, 0).await;
    let body = json!({"recipient": "target", "message": message_text(32, "hello")});
    for round in 0..ROUNDS * 3 {
        let sends = (0..16).map(|_| s.post("/messages/31", &from.token, body.clone()));
        race_device_delete(&s, &to, sends, StatusCode::CREATED, round).await;
        // The only device that could hold messages is gone: nothing may stay queued.
        assert_eq!(
            totals(&s).await.queued_messages,
            0,
            "round {round}: messages left behind"
        );
        recreate_device(&s, &to).await;
    }
}

/// Sends a request head and the first half of its JSON body on a raw connection; the caller
/// sends the rest with `finish`.
async fn half_sent_post(
    s: &TestServer,
    path: &str,
    token: &str,
    body: &[u8],
) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let addr = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first).await.expect("first half");
    stream.flush().await.expect("flush");
    (stream, rest.to_vec())
}

/// Sends the rest of the body and reads the answer's status line.
async fn finish(mut stream: tokio::net::TcpStream, rest: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(rest).await.expect("rest");
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("an answer within 30 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_device_created_while_its_user_is_deleted_is_refused_and_leaves_nothing() {
    let s = TestServer::start().await;
    let mut u = s.user("leaving").await;
    u.reg_id = 41;
    let body = serde_json::to_vec(&u.device_body(1, 20, 5, true)).unwrap();
    // The token is checked when the head arrives; the user goes while the body is on its way.
    let (stream, rest) = half_sent_post(&s, "/device/41", &u.token, &body).await;
    let password = json!({"current_password": crate::helpers::PASSWORD});
    let (status, res) = s.delete("/auth/users/me", &u.token, password).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "delete user: {res}");
    let status_line = finish(stream, &rest).await;
    assert!(
        status_line.contains(" 401 "),
        "a create for a deleted user must be refused: {status_line}"
    );
    let t = totals(&s).await;
    assert_eq!(
        (t.users, t.devices, t.prekeys, t.kyber_prekeys),
        (0, 0, 0, 0),
        "nothing of a deleted user may stay"
    );
}
