//! `POST /messages/<regId>`: who may send what to whom, and what the 201 answers.

use super::*;
use crate::helpers::*;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn send_answers_201_with_exactly_the_message_fields_and_content_verbatim() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    // Odd spacing, key order and escapes: the server must not re-serialize it.
    let content = "{ \"type\" : 3,\n  \"registrationId\":22, \"body\":\"h\\u00e9llo \u{1F600}\" }";
    let before = now_ms();
    let (status, res) = s
        .post(
            "/messages/11",
            &alice.token,
            json!({"recipient": "bob", "message": content}),
        )
        .await;
    let after = now_ms();
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let mut keys: Vec<&str> = res
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "content",
            "id",
            "recipientAddress",
            "senderAddress",
            "senderRegistrationID",
            "timestamp"
        ]
    );
    assert!(res["id"].is_u64(), "{res}");
    assert_eq!(res["senderAddress"], "alice.1");
    assert_eq!(res["senderRegistrationID"], 11);
    assert_eq!(res["content"], content);
    assert_eq!(res["recipientAddress"], "bob.1");
    let ts = res["timestamp"].as_u64().expect("integer timestamp");
    assert!(
        before <= ts && ts <= after,
        "timestamp {ts} not within [{before}, {after}] ms since epoch"
    );
    assert_eq!(queue(&s, &bob).await, vec![res]);
}

#[tokio::test]
async fn send_matches_the_recipient_username_case_insensitively() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("BoB", 22, 0, 0).await;
    for name in ["bob", "BOB", "bOb", "BoB"] {
        let (status, res) = send_to(&s, &alice, name, 22, name).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {res}");
        assert_eq!(res["recipientAddress"], "BoB.1", "stored as registered");
    }
    assert_eq!(queue(&s, &bob).await.len(), 4);
}

#[tokio::test]
async fn send_to_unknown_recipient_is_400_no_recipient() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let (status, res) = send_to(&s, &alice, "nobody", 22, "hi").await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "no_recipient",
        "to nobody",
    );
}

#[tokio::test]
async fn send_to_recipient_without_device_is_400_no_device() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    s.user("bob").await;
    let (status, res) = send_to(&s, &alice, "bob", 22, "hi").await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "no_device",
        "to bob without a device",
    );
    assert_eq!(res["message"], "Recipient has not yet registered a device");
}

#[tokio::test]
async fn send_with_inner_registration_id_not_the_recipients_is_403_recipient_identity_changed() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    for wrong in [23, 11, 0] {
        let (status, res) = send_to(&s, &alice, "bob", wrong, "hi").await;
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "recipient_identity_changed",
            "",
        );
    }
    assert!(queue(&s, &bob).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn send_with_message_not_json_or_without_integer_registration_id_is_400_invalid_data() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let mut wrong = Vec::new();
    for message in [
        "not json",
        "",
        "[22]",
        "22",
        "{\"type\": 1}",
        "{\"registrationId\": null}",
        "{\"registrationId\": \"abc\"}",
        "{\"registrationId\": 22.5}",
        "{\"registrationId\": [22]}",
        "{\"registrationId\": 22",
        "[22, 1, \"body\"]",
    ] {
        let (status, res) = s
            .post(
                "/messages/11",
                &alice.token,
                json!({"recipient": "bob", "message": message}),
            )
            .await;
        if status != StatusCode::BAD_REQUEST
            || res["code"] != "invalid_data"
            || !res["errors"]["message"].is_array()
        {
            wrong.push(format!("{message:?} -> {status} {res}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "want 400 invalid_data naming `message` for:\n{}",
        wrong.join("\n")
    );
    // `message` must be a string (the JSON text), and both fields are required.
    for body in [
        json!({"recipient": "bob", "message": {"registrationId": 22}}),
        json!({"recipient": "bob"}),
        json!({"message": message_text(22, "x")}),
        json!({"recipient": 5, "message": message_text(22, "x")}),
    ] {
        let (status, res) = s.post("/messages/11", &alice.token, body.clone()).await;
        assert_invalid_data(&(status, &res), &body);
    }
    assert!(queue(&s, &bob).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn send_over_max_message_bytes_is_400_invalid_data_and_at_the_limit_is_accepted() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-message-bytes", "1000"]).await;
    let (alice, bob) = alice_and_bob(&s).await;
    let overhead = message_text(22, "").len();
    let at_limit = message_text(22, &"a".repeat(1000 - overhead));
    assert_eq!(at_limit.len(), 1000);
    let over = message_text(22, &"a".repeat(1001 - overhead));
    assert_eq!(over.len(), 1001);

    let (status, res) = s
        .post(
            "/messages/11",
            &alice.token,
            json!({"recipient": "bob", "message": over}),
        )
        .await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "invalid_data",
        "1001 bytes",
    );
    assert!(res["errors"]["message"].is_array(), "{res}");
    assert!(queue(&s, &bob).await.is_empty(), "nothing stored");

    let (status, res) = s
        .post(
            "/messages/11",
            &alice.token,
            json!({"recipient": "bob", "message": at_limit}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(queue(&s, &bob).await.len(), 1);
}

#[tokio::test]
async fn send_to_a_full_queue_is_429_queue_full_and_stores_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-queued-messages", "3"]).await;
    let (alice, bob) = alice_and_bob(&s).await;
    let carol = s.user_with_device("carol", 33, 0, 0).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(id(&send(&s, &alice, &bob, &format!("m{i}")).await));
    }
    for from in [&alice, &carol] {
        let (status, res) = send_to(&s, from, "bob", 22, "one too many").await;
        assert_error(
            &(status, &res),
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "",
        );
    }
    assert_eq!(ids(&queue(&s, &bob).await), sent, "nothing stored");
    // The cap is per recipient: others still receive.
    send(&s, &bob, &carol, "fine").await;
    // Deleting one frees one slot.
    let (status, res) = delete_ids(&s, &bob, json!([sent[0]])).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    send(&s, &alice, &bob, "fits again").await;
    let (status, res) = send_to(&s, &alice, "bob", 22, "full again").await;
    assert_error(
        &(status, &res),
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        "",
    );
    assert_eq!(queue(&s, &bob).await.len(), 3);
}

#[tokio::test]
async fn send_from_a_caller_without_device_is_400_no_device() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    s.user_with_device("bob", 22, 0, 0).await;
    let no_device = (StatusCode::BAD_REQUEST, "no_device");
    assert_routes_refused(&s, &alice, "/messages/11", no_device).await;
}

#[tokio::test]
async fn message_routes_with_a_reg_id_not_the_callers_are_403_device_changed() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    send(&s, &alice, &bob, "hi").await;
    // Another user's regId is not yours either.
    let changed = (StatusCode::FORBIDDEN, "device_changed");
    for path in ["/messages/12", "/messages/22", "/messages/0"] {
        assert_routes_refused(&s, &alice, path, changed).await;
    }
    assert_eq!(queue(&s, &bob).await.len(), 1);
}

/// Every message route on `path` as `user` is refused with `(status, code)`: POST with a good
/// body and with one that is not JSON (the caller's device is checked before the body), GET
/// and DELETE.
async fn assert_routes_refused(
    s: &TestServer,
    user: &TestUser,
    path: &str,
    (status, code): (StatusCode, &str),
) {
    let good = json!({"recipient": "bob", "message": message_text(22, "hi")});
    let not_json = b"{oops".to_vec();
    let answers = [
        ("POST", s.post(path, &user.token, good).await),
        (
            "POST {oops",
            s.call_raw("POST", path, Some(&user.token), not_json).await,
        ),
        ("GET", s.get(path, &user.token).await),
        ("DELETE", s.delete(path, &user.token, json!([1])).await),
    ];
    for (what, answer) in answers {
        assert_error(&answer, status, code, format!("{what} {path}"));
    }
}

#[tokio::test]
async fn message_routes_without_a_valid_token_are_401() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let body = json!({"recipient": "bob", "message": message_text(22, "hi")});
    for (method, body) in [
        ("POST", Some(body.clone())),
        ("GET", None),
        ("DELETE", Some(json!([1]))),
    ] {
        for auth in [
            None,
            Some("Bearer not-a-jwt".to_string()),
            Some(format!("Bearer {}x", alice.token)),
            Some(alice.token.clone()),
        ] {
            let auth = auth.map(|a| HeaderValue::from_str(&a).unwrap());
            let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
            let answer = s.send(method, "/messages/11", auth.clone(), bytes).await;
            assert_401(&answer, format!("{method} with {auth:?}"));
        }
    }
    assert!(queue(&s, &bob).await.is_empty());
}

#[tokio::test]
async fn a_user_may_message_themselves() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let m = send(&s, &alice, &alice, "note to self").await;
    assert_eq!(m["senderAddress"], "alice.1");
    assert_eq!(m["recipientAddress"], "alice.1");
    assert_eq!(m["senderRegistrationID"], 11);
    assert_only_queued_then_deleted(&s, &alice, &m).await;
}

#[tokio::test]
async fn message_ids_strictly_increase_across_senders_and_recipients() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let mut last = 0;
    for i in 0..12 {
        let (from, to) = match i % 3 {
            0 => (&alice, &bob),
            1 => (&bob, &alice),
            _ => (&alice, &alice),
        };
        let m = send(&s, from, to, &format!("m{i}")).await;
        assert!(id(&m) > last, "id {} after {last}", id(&m));
        last = id(&m);
        // Deleting must not let an id be reused.
        if i % 2 == 0 {
            let (status, _) = delete_ids(&s, to, json!([id(&m)])).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
}
