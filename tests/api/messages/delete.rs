//! `DELETE /messages/<regId>`: one outcome per id, only for the recipient; and what deleting a
//! device or an account does to queues.

use super::*;
use crate::helpers::*;
use crate::websocket::backlog;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn delete_answers_one_outcome_per_id_in_request_order() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let [m1, m2, m3] = send_all(&s, &alice, &bob, ["one", "two", "three"]).await;
    let to_alice = id(&send(&s, &bob, &alice, "for alice").await);
    assert_deleted(
        &s,
        &bob,
        json!([m2, 999_999_999, to_alice, m1]),
        json!([
            "success",
            "non-existant_message",
            "not_message_owner",
            "success"
        ]),
    )
    .await;
    assert_eq!(ids(&queue(&s, &bob).await), [m3]);
    assert_eq!(ids(&queue(&s, &alice).await), [to_alice]);
    // Deleting again: gone.
    assert_deleted(
        &s,
        &bob,
        json!([m1, m3]),
        json!(["non-existant_message", "success"]),
    )
    .await;
    assert!(queue(&s, &bob).await.is_empty());
}

#[tokio::test]
async fn only_the_recipient_can_delete_and_the_sender_gets_not_message_owner() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let m = send(&s, &alice, &bob, "mine to delete").await;
    assert_deleted(&s, &alice, json!([id(&m)]), json!(["not_message_owner"])).await;
    assert_only_queued_then_deleted(&s, &bob, &m).await;
}

#[tokio::test]
async fn delete_with_an_empty_list_or_a_non_list_body_is_403_incorrect_arguments() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let m = id(&send(&s, &alice, &bob, "hi").await);
    for body in [
        json!([]),
        json!({}),
        json!({"ids": [m]}),
        json!(m),
        json!("1"),
    ] {
        let (status, res) = delete_ids(&s, &bob, body.clone()).await;
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            "",
        );
    }
    assert_eq!(ids(&queue(&s, &bob).await), [m]);
}

#[tokio::test]
async fn delete_with_a_non_integer_id_is_400_invalid_data_and_deletes_nothing() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let m = id(&send(&s, &alice, &bob, "hi").await);
    for body in [
        json!(["abc"]),
        json!([1.5]),
        json!([null]),
        json!([-1]),
        json!([[m]]),
        json!([{"id": m}]),
        json!([m, "x"]),
    ] {
        let (status, res) = delete_ids(&s, &bob, body.clone()).await;
        assert_invalid_data(&(status, &res), &body);
    }
    assert_eq!(ids(&queue(&s, &bob).await), [m], "nothing deleted");
}

#[tokio::test]
async fn delete_with_more_than_1000_ids_is_400_invalid_data() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let m = id(&send(&s, &alice, &bob, "hi").await);
    let mut too_many: Vec<u64> = (1_000_000..1_001_000).collect();
    too_many.push(m);
    assert_eq!(too_many.len(), 1001);
    let (status, res) = delete_ids(&s, &bob, json!(too_many)).await;
    assert_invalid_data(&(status, &res), "1001 ids");
    assert_eq!(ids(&queue(&s, &bob).await), [m], "nothing deleted");

    let mut most: Vec<u64> = (1_000_000..1_000_999).collect();
    most.push(m);
    let (status, res) = delete_ids(&s, &bob, json!(most)).await;
    assert_eq!(status, StatusCode::OK, "1000 ids are allowed: {res}");
    let out = res.as_array().unwrap();
    assert_eq!(out.len(), 1000);
    assert!(out[..999].iter().all(|r| r == "non-existant_message"));
    assert_eq!(out[999], "success");
}

#[tokio::test]
async fn deleting_the_recipients_device_removes_their_queue() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-queued-messages", "2"]).await;
    let (alice, bob) = alice_and_bob(&s).await;
    let [m1, m2] = send_all(&s, &alice, &bob, ["one", "two"]).await;
    let (status, _) = s.call("DELETE", "/device/", Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, res) = send_to(&s, &alice, "bob", 22, "into the void").await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "no_device",
        "to a deleted device",
    );

    // A new device starts with an empty queue, and the old messages are gone for good.
    let (status, res) = s
        .post("/device/22", &bob.token, bob.device_body(1, 0, 0, true))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert!(queue(&s, &bob).await.is_empty());
    assert_deleted(
        &s,
        &bob,
        json!([m1, m2]),
        json!(["non-existant_message", "non-existant_message"]),
    )
    .await;
    // The queue cap counts only what is queued now.
    send(&s, &alice, &bob, "three").await;
    send(&s, &alice, &bob, "four").await;
    assert_eq!(queue(&s, &bob).await.len(), 2);
}

#[tokio::test]
async fn messages_stay_queued_after_the_sender_deletes_their_device() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let m = send(&s, &alice, &bob, "before leaving").await;
    let (status, _) = s.call("DELETE", "/device/", Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_only_queued_then_deleted(&s, &bob, &m).await;
}

#[tokio::test]
async fn messages_stay_queued_after_the_sender_deletes_their_account() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let to_bob = send(&s, &alice, &bob, "before leaving").await;
    send(&s, &bob, &alice, "to a soon deleted account").await;
    let (status, res) = s
        .call(
            "DELETE",
            "/auth/users/me",
            Some(&alice.token),
            Some(&json!({"current_password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{res}");
    assert_eq!(queue(&s, &bob).await, vec![to_bob.clone()]);
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![to_bob]);
    let (status, res) = send_to(&s, &bob, "alice", 11, "anyone there?").await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "no_recipient",
        "to a deleted account",
    );
}
