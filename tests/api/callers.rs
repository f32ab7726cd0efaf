//! Each instance keeps the accounts of its callers (the user and its devices) instead of reading
//! them on every request. What that cache holds must never outlive what authorized it: a
//! password changed or a device unlinked on ANOTHER instance refuses the old token here too,
//! at once through the instances' signals, and within the cache's lifetime when the signal is
//! lost. (On one instance, the revocation and linked-device tests check the same at once.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{instances, link_device, Binary, TestUser, PASSWORD};

/// Longer than a signal takes, and than the cache keeps an entry (5 s) plus a listener's
/// reconnect: the bound for a refusal when the signal is lost.
const BOUND: Duration = Duration::from_secs(30);

async fn fetch(node: &Binary, reg_id: u32, token: &str) -> StatusCode {
    node.get(&format!("/messages/{reg_id}"), token).await.0
}

/// Waits (bounded) until `node` refuses the token.
async fn refused(node: &Binary, reg_id: u32, token: &str) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match fetch(node, reg_id, token).await {
            StatusCode::UNAUTHORIZED => return,
            StatusCode::OK => {}
            other => panic!("fetch answered {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old token still works on the other instance after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn change_password(node: &Binary, user: &TestUser) {
    let body = json!({"current_password": PASSWORD, "new_password": "another-Secret-77"});
    let (status, answer) = node.post("/auth/password", &user.token, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_on_one_instance_refuses_the_old_token_on_another_that_knew_it() {
    let Some(c) = instances(2, &[]).await else {
        return;
    };
    let alice = c.nodes[0].user_with_device("alice", 11, 0, 0).await;
    // Instance 1 has alice's account cached now.
    assert_eq!(fetch(&c.nodes[1], 11, &alice.token).await, StatusCode::OK);
    change_password(&c.nodes[0], &alice).await;
    refused(&c.nodes[1], 11, &alice.token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_whose_signal_is_lost_still_ends_the_token_on_the_other_instance() {
    let Some(c) = instances(2, &[]).await else {
        return;
    };
    let alice = c.nodes[0].user_with_device("alice", 11, 0, 0).await;
    let (_, second) = link_device(&c.nodes[0].client(), &alice, 12, 0, 0).await;
    assert_eq!(fetch(&c.nodes[1], 12, &second.token).await, StatusCode::OK);
    assert_eq!(fetch(&c.nodes[1], 11, &alice.token).await, StatusCode::OK);
    assert!(c.cut_listeners().await >= 2, "both instances listen");
    let unlinked = c.nodes[0]
        .client()
        .with_token(&alice.token)
        .unlink_device(2)
        .await;
    unlinked.expect("unlink 2");
    refused(&c.nodes[1], 12, &second.token).await;
    change_password(&c.nodes[0], &alice).await;
    refused(&c.nodes[1], 11, &alice.token).await;
}
