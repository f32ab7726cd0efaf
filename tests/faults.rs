//! Faults: a refused write changes nothing, a full disk never wedges the server and loses
//! nothing acknowledged, and a damaged database is reported, never spun on.
//!
//! The disk and corruption tests run the built binary (as an operator does) on a data dir of
//! their own; the disk-full test mounts a small tmpfs for it and skips, saying why, where
//! mounting is not allowed.

mod common;

use common::{message_text, TestServer, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Refused requests change nothing
// ---------------------------------------------------------------------------------------------

async fn send(s: &TestServer, from: &TestUser, to: &TestUser, body: &str) -> u64 {
    let (status, res) = s
        .post(
            &format!("/messages/{}", from.reg_id),
            &from.token,
            json!({"recipient": to.username, "message": message_text(to.reg_id, body)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "send: {res}");
    res["id"].as_u64().expect("id")
}

fn ids(queue: &Value) -> Vec<u64> {
    queue
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_refused_second_device_create_keeps_queue_keys_and_device() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 3, 2).await;
    let mut bob = s.user_with_device("bob", 22, 1, 1).await;
    let sent = vec![
        send(&s, &alice, &bob, "one").await,
        send(&s, &alice, &bob, "two").await,
    ];
    let before = s.get(&format!("/device/{}", bob.reg_id), &bob.token).await;
    assert_eq!(before.0, StatusCode::OK, "{}", before.1);

    // A second create, with other keys and another registration id: refused.
    bob.reg_id = 33;
    let body = bob.device_body(2, 5, 5, true);
    bob.reg_id = 22;
    let (status, res) = s.post("/device/33", &bob.token, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{res}");
    assert_eq!(res["code"], "device_exists");

    let (status, queue) = s.get(&format!("/messages/{}", bob.reg_id), &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(ids(&queue), sent, "the refused create touched the queue");
    let after = s.get(&format!("/device/{}", bob.reg_id), &bob.token).await;
    assert_eq!(after, before, "the refused create touched the device or its keys");
    s.stop().await;
}
