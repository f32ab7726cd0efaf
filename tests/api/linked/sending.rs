//! `POST /v2/messages/<regId>`: one ciphertext per device of the recipient, queued all or none;
//! 410 `stale_devices`, 409 `mismatched_devices`, 429 and the body's errors store nothing; sync
//! copies to one's own other devices. And the old send to a multi-device account: the primary's
//! queue only.

use std::collections::BTreeSet;

use super::*;
use crate::helpers::*;
use crate::messages::{now_ms, queue, send, send_to};
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::client::DeviceMessage;

/// The ids a `409`/`410` body lists under `field`.
fn listed_under(body: &Value, field: &str) -> Vec<u64> {
    let list = body[field].as_array();
    let list = list.unwrap_or_else(|| panic!("no list `{field}`: {body}"));
    list.iter()
        .map(|id| id.as_u64().expect("a device id"))
        .collect()
}

#[tokio::test]
async fn a_v2_send_answers_201_and_queues_each_device_its_own_message() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let before = now_ms();
    // `content` is opaque: not JSON, and no inner registrationId is checked.
    let sent = sent_v2(
        &s,
        &bob,
        "ALICE",
        vec![to(2, 12, "for 2"), to(1, 11, "not json {")],
    )
    .await;
    let after = now_ms();
    let fields: BTreeSet<&str> = sent
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(["timestamp", "messages"]), "{sent}");
    let timestamp = sent["timestamp"].as_u64().expect("timestamp");
    assert!(
        (before..=after).contains(&timestamp),
        "{timestamp} not in {before}..={after}"
    );
    let entries = sent["messages"].as_array().expect("messages");
    assert_eq!(entries.len(), 2, "{sent}");
    for e in entries {
        let fields: BTreeSet<&str> = e
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, BTreeSet::from(["deviceId", "id"]), "{sent}");
    }
    assert_ne!(id_for(&sent, 1), id_for(&sent, 2));
    assert_eq!(device_ids(entries), [2, 1], "in the order of the request");
    for (device, id, content) in [(&alice, 1, "not json {"), (&second, 2, "for 2")] {
        let q = queue(&s, device).await;
        let want = json!({
            "id": id_for(&sent, id), "senderAddress": "bob.1", "senderRegistrationID": 22,
            "content": content, "recipientAddress": format!("alice.{id}"),
            "timestamp": q.first().map(|m| m["timestamp"].clone()),
        });
        assert_eq!(q, vec![want], "the queue of device {id}");
        let t = q[0]["timestamp"].as_u64().expect("timestamp");
        assert!((before..=after).contains(&t), "device {id}: {t}");
    }
    assert!(queue(&s, &bob).await.is_empty(), "nothing for the sender");
    // The same with a trailing slash.
    let body = json!({"recipient": "alice", "messages": [to(1, 11, "/"), to(2, 12, "/")]});
    let (status, res) = s.post("/v2/messages/22/", &bob.token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(contents(&queue(&s, &second).await), ["for 2", "/"]);
}

#[tokio::test]
async fn a_v2_send_from_a_linked_device_names_that_device_as_the_sender() {
    let s = TestServer::start().await;
    let [_alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let sent = s
        .client_of(&second)
        .send_all(
            12,
            "bob",
            &[DeviceMessage {
                device_id: 1,
                registration_id: 22,
                content: "from device 2".into(),
            }],
        )
        .await
        .expect("send_all");
    assert_eq!(sent.messages.len(), 1);
    let q = queue(&s, &bob).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["id"], sent.messages[0].id);
    assert_eq!(
        (&q[0]["senderAddress"], &q[0]["senderRegistrationID"]),
        (&json!("alice.2"), &json!(12))
    );
}

#[tokio::test]
async fn a_stale_registration_id_is_410_stale_devices_and_stores_nothing() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let cases = [
        (
            vec![to(1, 11, "a"), to(2, 99, "b"), to(3, 13, "c")],
            vec![2],
        ),
        (
            vec![to(1, 12, "a"), to(2, 11, "b"), to(3, 13, "c")],
            vec![1, 2],
        ),
        // Stale ids come first: the missing device 3 and the unknown 4 are not reported yet.
        (
            vec![to(1, 11, "a"), to(2, 99, "b"), to(4, 14, "d")],
            vec![2],
        ),
    ];
    for (messages, stale) in cases {
        let what = format!("{messages:?}");
        let answer = send_v2(&s, &bob, "alice", messages).await;
        assert_error(&answer, StatusCode::GONE, "stale_devices", &what);
        let mut got = listed_under(&answer.1, "staleDevices");
        got.sort();
        assert_eq!(got, stale, "{what}");
    }
    // The typed client reads the list.
    let wrong = [(1, 11), (2, 12), (3, 31)].map(|(device_id, registration_id)| DeviceMessage {
        device_id,
        registration_id,
        content: "x".into(),
    });
    let refused = s
        .client_of(&bob)
        .send_all(22, "alice", &wrong)
        .await
        .expect_err("stale");
    let refusal = refused.refusal().expect("a refusal");
    assert_eq!(
        (refusal.status, refusal.devices("staleDevices")),
        (410, vec![3])
    );
    assert_queues_empty(&s, &[&alice, &second, &third], "after 410").await;
}

#[tokio::test]
async fn a_wrong_device_set_is_409_with_missing_and_extra_devices_and_stores_nothing() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let cases = [
        (vec![to(1, 11, "a"), to(2, 12, "b")], vec![3], vec![]),
        (
            vec![
                to(1, 11, "a"),
                to(2, 12, "b"),
                to(3, 13, "c"),
                to(4, 14, "d"),
            ],
            vec![],
            vec![4],
        ),
        (
            vec![to(1, 11, "a"), to(5, 15, "e"), to(127, 1, "f")],
            vec![2, 3],
            vec![5, 127],
        ),
        (vec![to(9, 19, "x")], vec![1, 2, 3], vec![9]),
    ];
    for (messages, missing, extra) in cases {
        let what = format!("{messages:?}");
        let answer = send_v2(&s, &bob, "alice", messages).await;
        assert_error(&answer, StatusCode::CONFLICT, "mismatched_devices", &what);
        let mut got = (
            listed_under(&answer.1, "missingDevices"),
            listed_under(&answer.1, "extraDevices"),
        );
        got.0.sort();
        got.1.sort();
        assert_eq!(got, (missing, extra), "{what}: (missing, extra)");
    }
    let two = [(1, 11), (2, 12)].map(|(device_id, registration_id)| DeviceMessage {
        device_id,
        registration_id,
        content: "x".into(),
    });
    let refused = s
        .client_of(&bob)
        .send_all(22, "alice", &two)
        .await
        .expect_err("mismatch");
    let refusal = refused.refusal().expect("a refusal");
    assert_eq!(refusal.status, 409);
    assert_eq!(
        (
            refusal.devices("missingDevices"),
            refusal.devices("extraDevices")
        ),
        (vec![3], vec![])
    );
    assert_queues_empty(&s, &[&alice, &second, &third], "after 409").await;
}

#[tokio::test]
async fn a_full_queue_on_one_device_refuses_the_whole_send() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-queued-messages", "2"]).await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let old = ["old 1", "old 2"].map(|body| message_text(11, body));
    send(&s, &bob, &alice, "old 1").await;
    send(&s, &bob, &alice, "old 2").await;
    let both = || vec![to(1, 11, "new"), to(2, 12, "new")];
    let answer = send_v2(&s, &bob, "alice", both()).await;
    assert_error(
        &answer,
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        "the primary's queue is full",
    );
    assert!(queue(&s, &second).await.is_empty(), "device 2 got nothing");
    assert_eq!(contents(&queue(&s, &alice).await), old);
    // Room on every device again: the same send goes through.
    let first = crate::messages::ids(&queue(&s, &alice).await)[0];
    let (status, _) = s.delete("/messages/11", &alice.token, json!([first])).await;
    assert_eq!(status, StatusCode::OK);
    sent_v2(&s, &bob, "alice", both()).await;
    assert_eq!(contents(&queue(&s, &second).await), ["new"]);
    assert_eq!(contents(&queue(&s, &alice).await), [old[1].as_str(), "new"]);
}

#[tokio::test]
async fn a_device_named_twice_is_400_invalid_data_and_stores_nothing() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    for messages in [
        vec![to(1, 11, "a"), to(1, 11, "a"), to(2, 12, "b")],
        vec![to(1, 11, "a"), to(2, 12, "b"), to(2, 12, "c")],
    ] {
        let answer = send_v2(&s, &bob, "alice", messages).await;
        assert_invalid(&answer, "messages", "a device twice");
    }
    assert_queues_empty(&s, &[&alice, &second], "after a device named twice").await;
}

#[tokio::test]
async fn bad_bodies_are_refused_and_store_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-message-bytes", "100"]).await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let big = "x".repeat(101);
    let invalid = [
        (
            json!({"recipient": "alice", "messages": [to(1, 11, &big), to(2, 12, "b")]}),
            "messages",
            "content over the limit",
        ),
        (
            json!({"recipient": "alice", "messages": [to(1, 11, "a"), {"deviceId": 2, "registrationId": 12}]}),
            "messages",
            "no content",
        ),
        (
            json!({"recipient": "alice", "messages": [to(1, 11, "a"), {"deviceId": 2, "registrationId": 12, "content": 5}]}),
            "messages",
            "content not a string",
        ),
        (
            json!({"recipient": "alice", "messages": [to(1, 11, "a"), {"deviceId": 2.5, "registrationId": 12, "content": "b"}]}),
            "messages",
            "deviceId not an integer",
        ),
        (
            json!({"recipient": "alice", "messages": "x"}),
            "messages",
            "messages not a list",
        ),
        (
            json!({"messages": [to(1, 11, "a"), to(2, 12, "b")]}),
            "recipient",
            "no recipient",
        ),
        (
            json!({"recipient": "alice", "messages": (1..=128).map(|d| to(d, 11, "m")).collect::<Vec<_>>()}),
            "messages",
            "128 items",
        ),
    ];
    for (body, field, what) in invalid {
        assert_invalid(
            &s.post("/v2/messages/22", &bob.token, body).await,
            field,
            what,
        );
    }
    let answer = s
        .post("/v2/messages/22", &bob.token, json!([to(1, 11, "a")]))
        .await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "incorrect_arguments",
        "a list body",
    );
    // An empty list: docs/API.md "Details": `incorrect_arguments` is for the top-level shape.
    let (status, body) = send_v2(&s, &bob, "alice", vec![]).await;
    assert_invalid(&(status, &body), "messages", "an empty messages list");
    let exactly = "y".repeat(100);
    sent_v2(
        &s,
        &bob,
        "alice",
        vec![to(1, 11, &exactly), to(2, 12, &exactly)],
    )
    .await;
    assert_eq!(
        contents(&queue(&s, &alice).await),
        [exactly.as_str()],
        "only the good send"
    );
    assert_eq!(queue(&s, &second).await.len(), 1);
}

#[tokio::test]
async fn v2_send_errors_of_the_recipient_and_of_the_caller() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let nodev = user_for(&s, "nodev", 33).await;
    let both = || vec![to(1, 11, "a"), to(2, 12, "b")];
    let answer = send_v2(&s, &bob, "nobody", both()).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "no_recipient",
        "an unknown recipient",
    );
    let answer = send_v2(&s, &bob, "nodev", vec![to(1, 33, "a")]).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "no_device",
        "a recipient without device",
    );
    assert_eq!(
        answer.1["message"],
        "Recipient has not yet registered a device"
    );
    let answer = send_v2(&s, &nodev, "alice", both()).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "no_device",
        "a caller without device",
    );
    let path = "/v2/messages/21/";
    let body = json!({"recipient": "alice", "messages": both()});
    let answer = s.post(path, &bob.token, body.clone()).await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "device_changed",
        "a regId not bob's",
    );
    let answer = s
        .send("POST", path, None, Some(body.to_string().into_bytes()))
        .await;
    assert_401(&answer, "no token");
    assert_queues_empty(&s, &[&alice, &second], "after the refused sends").await;
}

#[tokio::test]
async fn a_throttled_send_stores_nothing_and_a_send_counts_once_whatever_its_devices() {
    let s = TestServer::start_with(&[]).await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    // A burst of 200 sends per sender, then 20 a second: faster sends are throttled at last.
    let mut accepted = 0;
    let mut throttled = None;
    for i in 0..5000 {
        let answer = send_v2(&s, &bob, "alice", vec![to(1, 11, "a"), to(2, 12, "b")]).await;
        match answer.0 {
            StatusCode::CREATED => accepted += 1,
            _ => {
                assert_error(
                    &answer,
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    format!("send {i}"),
                );
                throttled = Some(i);
                break;
            }
        }
    }
    assert!(
        throttled.is_some(),
        "5000 sends in a row were never throttled"
    );
    // A send to two devices is one send of the budget, not two.
    assert!(accepted >= 200, "throttled after {accepted} sends");
    for device in [&alice, &second] {
        let path = format!("/messages/{}?limit=1000", device.reg_id);
        let (status, q) = s.get(&path, &alice.token).await;
        assert_eq!(status, StatusCode::OK, "{q}");
        assert_eq!(
            q.as_array().map(Vec::len),
            Some(accepted),
            "regId {}",
            device.reg_id
        );
    }
}

#[tokio::test]
async fn a_send_to_ones_own_account_expects_the_other_devices_only() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 0, 0).await;
    let answer = send_v2(
        &s,
        &second,
        "alice",
        vec![to(1, 11, "x"), to(2, 12, "x"), to(3, 13, "x")],
    )
    .await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "mismatched_devices",
        "the sending device named",
    );
    assert_eq!(listed_under(&answer.1, "extraDevices"), [2]);
    assert_eq!(listed_under(&answer.1, "missingDevices"), Vec::<u64>::new());
    let answer = send_v2(&s, &second, "alice", vec![to(1, 11, "x")]).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "mismatched_devices",
        "device 3 left out",
    );
    assert_eq!(listed_under(&answer.1, "missingDevices"), [3]);
    assert_queues_empty(&s, &[&alice, &second, &third], "after 409").await;

    let sent = sent_v2(
        &s,
        &second,
        "alice",
        vec![to(1, 11, "sync 1"), to(3, 13, "sync 3")],
    )
    .await;
    for (device, id, content) in [(&alice, 1, "sync 1"), (&third, 3, "sync 3")] {
        let q = queue(&s, device).await;
        assert_eq!(contents(&q), [content]);
        assert_eq!(q[0]["id"], id_for(&sent, id));
        assert_eq!(
            (&q[0]["senderAddress"], &q[0]["recipientAddress"]),
            (&json!("alice.2"), &json!(format!("alice.{id}")))
        );
    }
    assert!(
        queue(&s, &second).await.is_empty(),
        "no copy to the sending device"
    );
}

#[tokio::test]
async fn the_old_send_to_a_multi_device_account_reaches_the_primary_only() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = send(&s, &bob, &alice, "old client").await;
    assert_eq!(m["recipientAddress"], "alice.1");
    assert_eq!(queue(&s, &alice).await, vec![m]);
    assert!(queue(&s, &second).await.is_empty());
    // The inner registrationId must be the primary's: device 2's is not.
    let answer = send_to(&s, &bob, "alice", 12, "to device 2?").await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "recipient_identity_changed",
        "device 2's regId",
    );
    assert!(queue(&s, &second).await.is_empty());
    assert_eq!(queue(&s, &alice).await.len(), 1);
}
