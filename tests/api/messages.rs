//! Messages: sending, fetching and deleting queued messages over HTTP, and live delivery over
//! WebSocket (`/messages/<regId>/ws`), as API.md describes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::{message_text, ws_open, TestServer, TestUser, PASSWORD};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};

use crate::helpers::Ws;

/// How long any single wait on the server may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn messages_path(user: &TestUser) -> String {
    format!("/messages/{}", user.reg_id)
}

/// POST /messages/<from's regId> with a message addressed to `registration_id`.
async fn send_to(
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
async fn send(s: &TestServer, from: &TestUser, to: &TestUser, body: &str) -> Value {
    let (status, res) = send_to(s, from, &to.username, to.reg_id, body).await;
    assert_eq!(status, StatusCode::CREATED, "send: {res}");
    res
}

/// GET /messages/<regId> of `user`: the queued messages.
async fn queue(s: &TestServer, user: &TestUser) -> Vec<Value> {
    let (status, res) = s.get(&messages_path(user), &user.token).await;
    assert_eq!(status, StatusCode::OK, "list: {res}");
    res.as_array().expect("a JSON array").clone()
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

fn id(message: &Value) -> u64 {
    message["id"].as_u64().expect("integer id")
}

async fn delete_ids(s: &TestServer, user: &TestUser, body: Value) -> (StatusCode, Value) {
    s.delete(&messages_path(user), &user.token, body).await
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["message"].is_string(), "error without message: {body}");
}

/// Polls GET until `user`'s queue holds exactly `ids` (acks get no reply).
async fn wait_for_queue(s: &TestServer, user: &TestUser, want: &[u64]) {
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

/// Connects a WebSocket to `path`, with `Authorization: Bearer <token>` when given.
async fn ws_connect(s: &TestServer, path: &str, token: Option<&str>) -> Result<Ws, WsError> {
    let mut req = s.ws_url(path).into_client_request().expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake timed out")
        .map(|(ws, _)| ws)
}

/// The HTTP status (and JSON body) of a refused upgrade.
fn refused(result: Result<Ws, WsError>) -> (u16, Value) {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(WsError::Http(res)) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (res.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e:?}"),
    }
}

/// The next text frame, as JSON (pings and pongs skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = timeout(WAIT, ws.next())
            .await
            .expect("no frame from the server in time")
            .expect("the socket ended")
            .expect("WebSocket error");
        match frame {
            Frame::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON frame"),
            Frame::Ping(_) | Frame::Pong(_) => continue,
            other => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// Reads the backlog: message frames up to `queue_empty`; answers the messages.
async fn backlog(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let frame = next_json(ws).await;
        match frame["type"].as_str() {
            Some("queue_empty") => {
                assert_eq!(frame, json!({"type": "queue_empty"}));
                return out;
            }
            Some("message") => {
                assert_eq!(frame.as_object().unwrap().len(), 2, "frame: {frame}");
                out.push(frame["message"].clone());
            }
            _ => panic!("unexpected frame: {frame}"),
        }
    }
}

/// Waits until the server closes the socket; fails on any message frame before that.
async fn expect_closed(ws: &mut Ws) {
    loop {
        match timeout(WAIT, ws.next())
            .await
            .expect("the server did not close the socket in time")
        {
            None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => return,
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame before close: {other:?}"),
        }
    }
}

/// Asserts that nothing but pings arrives for a short while.
async fn expect_silence(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) => continue,
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

async fn ack(ws: &mut Ws, ids: &[u64]) {
    ws.send(Frame::text(json!({"type": "ack", "ids": ids}).to_string()))
        .await
        .expect("send ack");
}

// ---------------------------------------------------------------------------------------------
// POST /messages/<regId>

#[tokio::test]
async fn send_answers_201_with_exactly_the_message_fields_and_content_verbatim() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_recipient");
}

#[tokio::test]
async fn send_to_recipient_without_device_is_400_no_device() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    s.user("bob").await;
    let (status, res) = send_to(&s, &alice, "bob", 22, "hi").await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_device");
    assert_eq!(res["message"], "Recipient has not yet registered a device");
}

#[tokio::test]
async fn send_with_inner_registration_id_not_the_recipients_is_403_recipient_identity_changed() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    for wrong in [23, 11, 0] {
        let (status, res) = send_to(&s, &alice, "bob", wrong, "hi").await;
        assert_error(
            status,
            &res,
            StatusCode::FORBIDDEN,
            "recipient_identity_changed",
        );
    }
    assert!(queue(&s, &bob).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn send_with_message_not_json_or_without_integer_registration_id_is_400_invalid_data() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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
        assert_error(status, &res, StatusCode::BAD_REQUEST, "invalid_data");
        assert!(res["errors"].is_object(), "{body}: {res}");
    }
    assert!(queue(&s, &bob).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn send_over_max_message_bytes_is_400_invalid_data_and_at_the_limit_is_accepted() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-message-bytes", "1000"]).await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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
    assert_error(status, &res, StatusCode::BAD_REQUEST, "invalid_data");
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
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let carol = s.user_with_device("carol", 33, 0, 0).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(id(&send(&s, &alice, &bob, &format!("m{i}")).await));
    }
    for from in [&alice, &carol] {
        let (status, res) = send_to(&s, from, "bob", 22, "one too many").await;
        assert_error(status, &res, StatusCode::TOO_MANY_REQUESTS, "queue_full");
    }
    assert_eq!(ids(&queue(&s, &bob).await), sent, "nothing stored");
    // The cap is per recipient: others still receive.
    send(&s, &bob, &carol, "fine").await;
    // Deleting one frees one slot.
    let (status, res) = delete_ids(&s, &bob, json!([sent[0]])).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    send(&s, &alice, &bob, "fits again").await;
    let (status, res) = send_to(&s, &alice, "bob", 22, "full again").await;
    assert_error(status, &res, StatusCode::TOO_MANY_REQUESTS, "queue_full");
    assert_eq!(queue(&s, &bob).await.len(), 3);
}

#[tokio::test]
async fn send_from_a_caller_without_device_is_400_no_device() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    s.user_with_device("bob", 22, 0, 0).await;
    let (status, res) = s
        .post(
            "/messages/11",
            &alice.token,
            json!({"recipient": "bob", "message": message_text(22, "hi")}),
        )
        .await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_device");
    // The caller's device is checked before the body.
    let (status, res) = s
        .call_raw(
            "POST",
            "/messages/11",
            Some(&alice.token),
            b"{oops".to_vec(),
        )
        .await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_device");
    let (status, res) = s.get("/messages/11", &alice.token).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_device");
    let (status, res) = s.delete("/messages/11", &alice.token, json!([1])).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_device");
}

#[tokio::test]
async fn message_routes_with_a_reg_id_not_the_callers_are_403_device_changed() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    send(&s, &alice, &bob, "hi").await;
    // Another user's regId is not yours either.
    for path in ["/messages/12", "/messages/22", "/messages/0"] {
        let (status, res) = s
            .post(
                path,
                &alice.token,
                json!({"recipient": "bob", "message": message_text(22, "hi")}),
            )
            .await;
        assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
        let (status, res) = s.get(path, &alice.token).await;
        assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
        let (status, res) = s.delete(path, &alice.token, json!([1])).await;
        assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
    }
    // Checked before the body.
    let (status, res) = s
        .call_raw(
            "POST",
            "/messages/12",
            Some(&alice.token),
            b"{oops".to_vec(),
        )
        .await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
    assert_eq!(queue(&s, &bob).await.len(), 1);
}

#[tokio::test]
async fn message_routes_without_a_valid_token_are_401() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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
            let mut req = s
                .http
                .request(method.parse().unwrap(), s.url("/messages/11"));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let res = req.send().await.unwrap();
            let status = res.status();
            let www = res.headers().get("www-authenticate").cloned();
            let value: Value = res.json().await.expect("JSON error body");
            assert_error(
                status,
                &value,
                StatusCode::UNAUTHORIZED,
                "not_authenticated",
            );
            assert_eq!(
                www.as_ref().and_then(|v| v.to_str().ok()),
                Some("Bearer realm=\"api\""),
                "{method} with {auth:?}"
            );
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
    assert_eq!(queue(&s, &alice).await, vec![m.clone()]);
    let (status, res) = delete_ids(&s, &alice, json!([id(&m)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res, json!(["success"]));
}

#[tokio::test]
async fn message_ids_strictly_increase_across_senders_and_recipients() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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

// ---------------------------------------------------------------------------------------------
// GET /messages/<regId>

#[tokio::test]
async fn get_lists_the_queue_oldest_first_in_the_201_shape_without_deleting() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let carol = s.user_with_device("carol", 33, 0, 0).await;
    assert!(queue(&s, &bob).await.is_empty());
    let sent = vec![
        send(&s, &alice, &bob, "one").await,
        send(&s, &carol, &bob, "two").await,
        send(&s, &alice, &bob, "three").await,
    ];
    assert_eq!(queue(&s, &bob).await, sent);
    assert_eq!(queue(&s, &bob).await, sent, "not deleted on read");
}

#[tokio::test]
async fn get_answers_at_most_1000_messages_and_the_rest_after_deleting() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    // 1001 sends, 50 at a time.
    let mut total = Vec::new();
    for chunk in (0..1001).collect::<Vec<u32>>().chunks(50) {
        let sends = chunk.iter().map(|_| send(&s, &alice, &bob, "x"));
        total.extend(futures_util::future::join_all(sends).await.iter().map(id));
    }
    total.sort();
    assert_eq!(total.len(), 1001);

    let page = queue(&s, &bob).await;
    assert_eq!(ids(&page), total[..1000], "the oldest 1000, oldest first");
    let (status, res) = s.get("/messages/22?limit=1000", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res.as_array().unwrap().len(), 1000);

    let (status, res) = delete_ids(&s, &bob, json!(total[..1000])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(res.as_array().unwrap().iter().all(|r| r == "success"));
    assert_eq!(ids(&queue(&s, &bob).await), total[1000..]);
}

#[tokio::test]
async fn get_with_limit_answers_that_many_oldest_first() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send(&s, &alice, &bob, &format!("m{i}")).await);
    }
    for (query, n) in [
        ("limit=1", 1),
        ("limit=2", 2),
        ("limit=5", 5),
        ("limit=1000", 5),
    ] {
        for path in [
            format!("/messages/22?{query}"),
            format!("/messages/22/?{query}"),
        ] {
            let (status, res) = s.get(&path, &bob.token).await;
            assert_eq!(status, StatusCode::OK, "{path}: {res}");
            assert_eq!(res.as_array().unwrap()[..], sent[..n], "{path}");
        }
    }
}

#[tokio::test]
async fn get_with_limit_outside_1_to_1000_is_400_invalid_data() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    send(&s, &alice, &bob, "hi").await;
    for limit in [
        "0",
        "1001",
        "abc",
        "-1",
        "",
        "1.5",
        "99999999999999999999999",
    ] {
        let (status, res) = s
            .get(&format!("/messages/22?limit={limit}"), &bob.token)
            .await;
        assert_error(status, &res, StatusCode::BAD_REQUEST, "invalid_data");
        assert!(res["errors"]["limit"].is_array(), "limit={limit:?}: {res}");
    }
}

// ---------------------------------------------------------------------------------------------
// DELETE /messages/<regId>

#[tokio::test]
async fn delete_answers_one_outcome_per_id_in_request_order() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m1 = id(&send(&s, &alice, &bob, "one").await);
    let m2 = id(&send(&s, &alice, &bob, "two").await);
    let m3 = id(&send(&s, &alice, &bob, "three").await);
    let to_alice = id(&send(&s, &bob, &alice, "for alice").await);
    let (status, res) = delete_ids(&s, &bob, json!([m2, 999_999_999, to_alice, m1])).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(
        res,
        json!([
            "success",
            "non-existant_message",
            "not_message_owner",
            "success"
        ])
    );
    assert_eq!(ids(&queue(&s, &bob).await), [m3]);
    assert_eq!(ids(&queue(&s, &alice).await), [to_alice]);
    // Deleting again: gone.
    let (status, res) = delete_ids(&s, &bob, json!([m1, m3])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res, json!(["non-existant_message", "success"]));
    assert!(queue(&s, &bob).await.is_empty());
}

#[tokio::test]
async fn only_the_recipient_can_delete_and_the_sender_gets_not_message_owner() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = send(&s, &alice, &bob, "mine to delete").await;
    let (status, res) = delete_ids(&s, &alice, json!([id(&m)])).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res, json!(["not_message_owner"]));
    assert_eq!(queue(&s, &bob).await, vec![m.clone()]);
    let (status, res) = delete_ids(&s, &bob, json!([id(&m)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res, json!(["success"]));
}

#[tokio::test]
async fn delete_with_an_empty_list_or_a_non_list_body_is_403_incorrect_arguments() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = id(&send(&s, &alice, &bob, "hi").await);
    for body in [
        json!([]),
        json!({}),
        json!({"ids": [m]}),
        json!(m),
        json!("1"),
    ] {
        let (status, res) = delete_ids(&s, &bob, body.clone()).await;
        assert_error(status, &res, StatusCode::FORBIDDEN, "incorrect_arguments");
    }
    assert_eq!(ids(&queue(&s, &bob).await), [m]);
}

#[tokio::test]
async fn delete_with_a_non_integer_id_is_400_invalid_data_and_deletes_nothing() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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
        assert_error(status, &res, StatusCode::BAD_REQUEST, "invalid_data");
        assert!(res["errors"].is_object(), "{body}: {res}");
    }
    assert_eq!(ids(&queue(&s, &bob).await), [m], "nothing deleted");
}

#[tokio::test]
async fn delete_with_more_than_1000_ids_is_400_invalid_data() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = id(&send(&s, &alice, &bob, "hi").await);
    let mut too_many: Vec<u64> = (1_000_000..1_001_000).collect();
    too_many.push(m);
    assert_eq!(too_many.len(), 1001);
    let (status, res) = delete_ids(&s, &bob, json!(too_many)).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "invalid_data");
    assert!(res["errors"].is_object(), "{res}");
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

// ---------------------------------------------------------------------------------------------
// Trailing slashes

#[tokio::test]
async fn every_message_route_answers_with_and_without_trailing_slash() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    for slash in ["", "/"] {
        let (status, sent) = s
            .post(
                &format!("/messages/11{slash}"),
                &alice.token,
                json!({"recipient": "bob", "message": message_text(22, slash)}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "POST {slash:?}: {sent}");

        let (status, res) = s.get(&format!("/messages/22{slash}"), &bob.token).await;
        assert_eq!(status, StatusCode::OK, "GET {slash:?}");
        assert_eq!(res, json!([sent.clone()]));

        let mut ws = ws_connect(&s, &format!("/messages/22/ws{slash}"), Some(&bob.token))
            .await
            .unwrap_or_else(|e| panic!("ws {slash:?}: {e:?}"));
        assert_eq!(backlog(&mut ws).await, vec![sent.clone()]);
        let _ = ws.close(None).await;

        let (status, res) = s
            .delete(
                &format!("/messages/22{slash}"),
                &bob.token,
                json!([id(&sent)]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "DELETE {slash:?}");
        assert_eq!(res, json!(["success"]));
    }
    // Errors are identical too.
    for slash in ["", "/"] {
        let (status, res) = s.get(&format!("/messages/23{slash}"), &bob.token).await;
        assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
        let (status, res) =
            refused(ws_connect(&s, &format!("/messages/23/ws{slash}"), Some(&bob.token)).await);
        assert_eq!(status, 403, "{res}");
    }
}

// ---------------------------------------------------------------------------------------------
// Device and account deletion

#[tokio::test]
async fn deleting_the_recipients_device_removes_their_queue() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-queued-messages", "2"]).await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m1 = id(&send(&s, &alice, &bob, "one").await);
    let m2 = id(&send(&s, &alice, &bob, "two").await);
    let (status, _) = s.call("DELETE", "/device/", Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, res) = send_to(&s, &alice, "bob", 22, "into the void").await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_device");

    // A new device starts with an empty queue, and the old messages are gone for good.
    let (status, res) = s
        .post("/device/22", &bob.token, bob.device_body(1, 0, 0, true))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert!(queue(&s, &bob).await.is_empty());
    let (status, res) = delete_ids(&s, &bob, json!([m1, m2])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res, json!(["non-existant_message", "non-existant_message"]));
    // The queue cap counts only what is queued now.
    send(&s, &alice, &bob, "three").await;
    send(&s, &alice, &bob, "four").await;
    assert_eq!(queue(&s, &bob).await.len(), 2);
}

#[tokio::test]
async fn messages_stay_queued_after_the_sender_deletes_their_device() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = send(&s, &alice, &bob, "before leaving").await;
    let (status, _) = s.call("DELETE", "/device/", Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(queue(&s, &bob).await, vec![m.clone()]);
    let (status, res) = delete_ids(&s, &bob, json!([id(&m)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res, json!(["success"]));
}

#[tokio::test]
async fn messages_stay_queued_after_the_sender_deletes_their_account() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
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
    assert_error(status, &res, StatusCode::BAD_REQUEST, "no_recipient");
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn ws_upgrade_with_missing_or_bad_token_is_refused_with_401() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let cases = [
        ("/messages/11/ws".to_string(), None),
        ("/messages/11/ws".to_string(), Some("garbage")),
        (format!("/messages/11/ws?token={}x", alice.token), None),
        ("/messages/11/ws?token=".to_string(), None),
        ("/messages/11/ws?token=garbage".to_string(), None),
    ];
    for (path, token) in cases {
        let (status, body) = refused(ws_connect(&s, &path, token).await);
        assert_eq!(status, 401, "{path} with {token:?}: {body}");
        assert_eq!(body["code"], "not_authenticated", "{path}");
    }
}

#[tokio::test]
async fn ws_route_without_an_upgrade_is_400_not_500() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    // What a proxy that does not pass upgrades sends: `Connection: close`, or keep-alive.
    for connection in ["close", "keep-alive"] {
        let res = s
            .http
            .get(s.url("/messages/11/ws"))
            .bearer_auth(&alice.token)
            .header("connection", connection)
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "Connection: {connection}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_data");
    }
}

#[tokio::test]
async fn ws_upgrade_with_wrong_reg_id_is_403_and_without_device_400() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let nodev = s.user("nodev").await;
    let (status, body) = refused(ws_connect(&s, "/messages/12/ws", Some(&alice.token)).await);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "device_changed");
    let (status, body) =
        refused(ws_connect(&s, &format!("/messages/12/ws?token={}", alice.token), None).await);
    assert_eq!(status, 403, "{body}");
    let (status, body) = refused(ws_connect(&s, "/messages/11/ws", Some(&nodev.token)).await);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "no_device");
}

#[tokio::test]
async fn ws_accepts_the_token_in_the_query_string() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = send(&s, &alice, &bob, "via query").await;
    let mut ws = ws_connect(&s, &format!("/messages/22/ws?token={}", bob.token), None)
        .await
        .expect("upgrade with ?token=");
    assert_eq!(backlog(&mut ws).await, vec![m]);
}

#[tokio::test]
async fn ws_sends_the_backlog_oldest_first_then_queue_empty() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let carol = s.user_with_device("carol", 33, 0, 0).await;

    // Empty queue: just queue_empty.
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "queue_empty"}));
    let _ = ws.close(None).await;
    drop(ws);

    let mut sent = Vec::new();
    for i in 0..4 {
        let from = if i % 2 == 0 { &alice } else { &carol };
        sent.push(send(&s, from, &bob, &format!("m{i}")).await);
    }
    let mut ws = ws_open(&s, &bob).await;
    for m in &sent {
        assert_eq!(
            next_json(&mut ws).await,
            json!({"type": "message", "message": m})
        );
    }
    assert_eq!(next_json(&mut ws).await, json!({"type": "queue_empty"}));
    assert_eq!(
        queue(&s, &bob).await,
        sent,
        "delivery alone deletes nothing"
    );
}

#[tokio::test]
async fn ws_delivers_a_new_message_live() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let old = send(&s, &alice, &bob, "old").await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![old]);
    for i in 0..3 {
        let m = send(&s, &alice, &bob, &format!("live {i}")).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"type": "message", "message": m})
        );
    }
    // A message to someone else does not show up here.
    send(&s, &bob, &alice, "not for bob").await;
    let own = send(&s, &bob, &bob, "for bob").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "message", "message": own})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_delivers_every_message_live_when_senders_race() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut ws = ws_open(&s, &bob).await;
    assert!(backlog(&mut ws).await.is_empty());
    let mut senders = Vec::new();
    for n in 0..4u32 {
        let sender = s
            .user_with_device(&format!("sender{n}"), 100 + n, 0, 0)
            .await;
        let (s, bob_name) = (s.clone(), bob.username.clone());
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                let body = json!({"recipient": bob_name, "message": message_text(22, &format!("{n}-{i}"))});
                let (status, m) = s.post(&format!("/messages/{}", 100 + n), &sender.token, body).await;
                assert_eq!(status, 201, "{m}");
                ids.push(m["id"].as_u64().unwrap());
            }
            ids
        }));
    }
    let mut sent = std::collections::BTreeSet::new();
    for t in senders {
        sent.extend(t.await.unwrap());
    }
    // Concurrent sends finish in any order; every one must still arrive live.
    let mut got = std::collections::BTreeSet::new();
    while got.len() < sent.len() {
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert!(
            got.insert(frame["message"]["id"].as_u64().unwrap()),
            "delivered twice: {frame}"
        );
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn ws_ack_deletes_the_acknowledged_messages() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m1 = id(&send(&s, &alice, &bob, "one").await);
    let m2 = id(&send(&s, &alice, &bob, "two").await);
    let m3 = id(&send(&s, &alice, &bob, "three").await);
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(ids(&backlog(&mut ws).await), [m1, m2, m3]);
    ack(&mut ws, &[m1, m3]).await;
    wait_for_queue(&s, &bob, &[m2]).await;
    // An ack of unknown ids is harmless, and the socket keeps working.
    ack(&mut ws, &[999_999_999]).await;
    let m4 = send(&s, &alice, &bob, "four").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "message", "message": m4})
    );
    ack(&mut ws, &[m2, id(&m4)]).await;
    wait_for_queue(&s, &bob, &[]).await;
}

#[tokio::test]
async fn ws_redelivers_an_unacknowledged_message_on_the_next_connection() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let queued = send(&s, &alice, &bob, "queued").await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![queued.clone()]);
    let live = send(&s, &alice, &bob, "live").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "message", "message": live})
    );
    let _ = ws.close(None).await;
    drop(ws);

    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![queued.clone(), live.clone()]);
    ack(&mut ws, &[id(&queued)]).await;
    wait_for_queue(&s, &bob, &[id(&live)]).await;
    drop(ws);

    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![live]);
}

#[tokio::test]
async fn ws_a_newer_connection_replaces_the_older_one() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut old = ws_open(&s, &bob).await;
    assert!(backlog(&mut old).await.is_empty());
    let mut new = ws_connect(&s, &format!("/messages/22/ws?token={}", bob.token), None)
        .await
        .expect("second upgrade");
    assert!(backlog(&mut new).await.is_empty());
    expect_closed(&mut old).await;
    let m = send(&s, &alice, &bob, "to the newest").await;
    assert_eq!(
        next_json(&mut new).await,
        json!({"type": "message", "message": m})
    );
}

#[tokio::test]
async fn ws_deleting_the_device_closes_the_socket() {
    let s = TestServer::start().await;
    s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut ws = ws_open(&s, &bob).await;
    assert!(backlog(&mut ws).await.is_empty());
    let (status, _) = s.call("DELETE", "/device/", Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    expect_closed(&mut ws).await;
}

#[tokio::test]
async fn ws_deleting_the_account_closes_the_socket() {
    let s = TestServer::start().await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut ws = ws_open(&s, &bob).await;
    assert!(backlog(&mut ws).await.is_empty());
    let (status, _) = s
        .call(
            "DELETE",
            "/auth/users/me",
            Some(&bob.token),
            Some(&json!({"current_password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    expect_closed(&mut ws).await;
}

#[tokio::test]
async fn ws_a_user_cannot_ack_another_users_messages() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let to_bob = id(&send(&s, &alice, &bob, "for bob").await);
    let to_alice = id(&send(&s, &bob, &alice, "for alice").await);
    let mut ws = ws_open(&s, &alice).await;
    assert_eq!(ids(&backlog(&mut ws).await), [to_alice]);
    // Acks on one socket are handled in order: once her own is gone, the other was handled.
    ack(&mut ws, &[to_bob]).await;
    ack(&mut ws, &[to_alice]).await;
    wait_for_queue(&s, &alice, &[]).await;
    assert_eq!(ids(&queue(&s, &bob).await), [to_bob]);
    // Mixed in one ack, too.
    let to_alice = id(&send(&s, &bob, &alice, "again").await);
    assert_eq!(next_json(&mut ws).await["message"]["id"], to_alice);
    ack(&mut ws, &[to_bob, to_alice]).await;
    wait_for_queue(&s, &alice, &[]).await;
    assert_eq!(ids(&queue(&s, &bob).await), [to_bob]);
}

// ---------------------------------------------------------------------------------------------
// Isolation

#[tokio::test]
async fn no_user_reads_deletes_or_acks_another_users_messages() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let eve = s.user_with_device("eve", 66, 0, 0).await;
    let for_bob = send(&s, &alice, &bob, "secret").await;

    // Read: Eve's queue is her own; Bob's path is not hers.
    assert!(queue(&s, &eve).await.is_empty());
    let (status, res) = s.get("/messages/22", &eve.token).await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
    let (status, _) = refused(ws_connect(&s, "/messages/22/ws", Some(&eve.token)).await);
    assert_eq!(status, 403);

    // Eve's socket sees neither the backlog nor live messages of Bob.
    let mut eve_ws = ws_open(&s, &eve).await;
    assert!(backlog(&mut eve_ws).await.is_empty());
    let live_for_bob = send(&s, &alice, &bob, "live secret").await;
    let mut bob_ws = ws_open(&s, &bob).await;
    assert_eq!(
        backlog(&mut bob_ws).await,
        vec![for_bob.clone(), live_for_bob.clone()]
    );

    // Delete and ack: refused or without effect.
    let (status, res) = delete_ids(&s, &eve, json!([id(&for_bob)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res, json!(["not_message_owner"]));
    let (status, res) = s
        .delete("/messages/22", &eve.token, json!([id(&for_bob)]))
        .await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "device_changed");
    ack(&mut eve_ws, &[id(&for_bob), id(&live_for_bob)]).await;
    let own = id(&send(&s, &alice, &eve, "for eve").await);
    assert_eq!(next_json(&mut eve_ws).await["message"]["id"], own);
    ack(&mut eve_ws, &[own]).await;
    wait_for_queue(&s, &eve, &[]).await;
    assert_eq!(queue(&s, &bob).await, vec![for_bob, live_for_bob]);
    expect_silence(&mut bob_ws, Duration::from_millis(200)).await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test]
async fn graceful_stop_completes_while_a_websocket_is_open() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = send(&s, &alice, &bob, "still here after restart").await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![m]);
    // The client stays connected and does not read while the server stops.
    timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("stop() hung with a WebSocket open");
    expect_closed(&mut ws).await;
}
