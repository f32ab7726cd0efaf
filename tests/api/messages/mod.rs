//! Messages over HTTP, as docs/API.md's "Messages" describes them: sending (`send`, and with an
//! `Idempotency-Key`: `idempotent`), reading (`fetch`) and deleting (`delete`) queued messages.
//! Live delivery is `crate::websocket`; the helpers here serve both.

mod delete;
mod fetch;
mod idempotent;
mod send;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::{message_text, TestServer, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub(crate) fn messages_path(user: &TestUser) -> String {
    format!("/messages/{}", user.reg_id)
}

/// POST /messages/<from's regId> with a message addressed to `registration_id`.
pub(crate) async fn send_to(
    s: &TestServer,
    from: &TestUser,
    recipient: &str,
    registration_id: u32,
    body: &str,
) -> (StatusCode, Value) {
    s.post(
        &messages_path(from),
        &from.token,
        json!({"recipient": recipient, "message": message_text(registration_id, body)}),
    )
    .await
}

/// A successful send from `from` to `to`; answers the 201 body.
pub(crate) async fn send(s: &TestServer, from: &TestUser, to: &TestUser, body: &str) -> Value {
    let (status, res) = send_to(s, from, &to.username, to.reg_id, body).await;
    assert_eq!(status, StatusCode::CREATED, "send: {res}");
    res
}

/// alice (regId 11) and bob (regId 22), each with a device.
pub(crate) async fn alice_and_bob(s: &TestServer) -> (TestUser, TestUser) {
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    (alice, s.user_with_device("bob", 22, 0, 0).await)
}

/// Successful sends of `bodies` from `from` to `to`, in order; answers their ids.
pub(crate) async fn send_all<const N: usize>(
    s: &TestServer,
    from: &TestUser,
    to: &TestUser,
    bodies: [&str; N],
) -> [u64; N] {
    let mut ids = [0; N];
    for (i, body) in bodies.into_iter().enumerate() {
        ids[i] = id(&send(s, from, to, body).await);
    }
    ids
}

/// GET /messages/<regId> of `user`: the queued messages.
pub(crate) async fn queue(s: &TestServer, user: &TestUser) -> Vec<Value> {
    let (status, res) = s.get(&messages_path(user), &user.token).await;
    assert_eq!(status, StatusCode::OK, "list: {res}");
    res.as_array().expect("a JSON array").clone()
}

pub(crate) fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

pub(crate) fn id(message: &Value) -> u64 {
    message["id"].as_u64().expect("integer id")
}

pub(crate) async fn delete_ids(
    s: &TestServer,
    user: &TestUser,
    body: Value,
) -> (StatusCode, Value) {
    s.delete(&messages_path(user), &user.token, body).await
}

/// `DELETE` of `ids` as `user` answers 200 with `outcomes`, one per id.
pub(crate) async fn assert_deleted(s: &TestServer, user: &TestUser, ids: Value, outcomes: Value) {
    let (status, res) = delete_ids(s, user, ids).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res, outcomes);
}

/// `user`'s queue holds exactly `message`, and deleting it succeeds.
pub(crate) async fn assert_only_queued_then_deleted(
    s: &TestServer,
    user: &TestUser,
    message: &Value,
) {
    assert_eq!(queue(s, user).await, vec![message.clone()]);
    assert_deleted(s, user, json!([id(message)]), json!(["success"])).await;
}

/// Polls GET until `user`'s queue holds exactly `ids` (acks get no reply).
pub(crate) async fn wait_for_queue(s: &TestServer, user: &TestUser, want: &[u64]) {
    for _ in 0..200 {
        if ids(&queue(s, user).await) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "queue of {} never became {want:?}; it is {:?}",
        user.username,
        ids(&queue(s, user).await)
    );
}
