//! Nothing outlives what authorized it: a socket closes when its device goes, its token is revoked
//! (password changed, by the user or the operator) or expires, each with its own close code; a
//! write's follow-up (closing sockets, the live push) happens even when the client hangs up right
//! after sending the request; tokens bound to a device act as that device only and die with it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;
use crate::linked::alice_with_two;
use crate::messages::{alice_and_bob, messages_path};

/// Close codes of docs/API.md, "Live delivery".
const DEVICE_REMOVED: Option<u16> = Some(4001);
const TOKEN_REVOKED: Option<u16> = Some(4002);
const TOKEN_EXPIRED: Option<u16> = Some(4003);

/// Well within the 30 s after which a socket's own re-check would close it anyway.
const AT_ONCE: Duration = Duration::from_secs(10);

/// Writes a whole request on a new connection and hangs up `after` that, without reading the
/// answer: the server sees the client gone while it works on the request.
async fn send_and_hang_up_with(
    s: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
    after: Duration,
) {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(after).await;
    // A reset, not a graceful close: the server's next read fails at once.
    stream.set_zero_linger().expect("linger");
    drop(stream);
}

/// A request without a body, abandoned `after` it is written (with nothing left to read, the
/// server notices the hang-up at once).
async fn send_and_hang_up(s: &TestServer, method: &str, path: &str, token: &str, after: Duration) {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(after).await;
    stream.set_zero_linger().expect("linger");
    drop(stream);
}

/// Whether `done` comes true within a couple of seconds of a request the client abandoned: the
/// server either carried it out (and then all of it, follow-up included) or dropped it before
/// its commit. Either is allowed; what is checked is the first case.
async fn carried_out<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done().await
}

/// How long after writing its request a client hangs up in round `round`: at once, then later
/// and later, so that some hang-ups land while the server is committing.
fn hang_up_after(round: u32) -> Duration {
    Duration::from_millis(u64::from(round % 10))
}

#[tokio::test]
async fn an_unlink_closes_the_device_socket_even_when_the_client_hangs_up_at_once() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let mut carried = 0;
    for round in 0..10 {
        let reg_id = 100 + round;
        let (id, linked) = s.link_device(&alice, reg_id, 0, 0).await;
        let mut ws = ws_open(&s, &linked).await;
        assert!(read_backlog(&mut ws).await.is_empty());
        let path = format!("/v2/devices/{id}");
        send_and_hang_up(&s, "DELETE", &path, &alice.token, hang_up_after(round)).await;
        let gone = carried_out(|| async {
            let (_, devices) = s.get("/v2/devices", &alice.token).await;
            devices.as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
        if gone {
            carried += 1;
        } else {
            let (status, body) = s.call("DELETE", &path, Some(&alice.token), None).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        }
        assert_eq!(
            close_code_within(&mut ws, AT_ONCE).await,
            DEVICE_REMOVED,
            "round {round}: the unlinked device's socket (unlinked by the abandoned request: {gone})"
        );
        let (status, _) = s.get("/v2/devices", &linked.token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "its token died with it");
    }
    assert!(
        carried > 0,
        "no abandoned unlink was carried out: the test proved nothing"
    );
}

#[tokio::test]
async fn deleting_the_devices_closes_their_sockets_even_when_the_client_hangs_up_at_once() {
    let s = TestServer::start().await;
    let mut carried = 0;
    for round in 0..6 {
        let [alice, second] = alice_with_two(&s, 0, 0).await;
        let mut sockets = Vec::new();
        for device in [&alice, &second] {
            let mut ws = ws_open(&s, device).await;
            assert!(read_backlog(&mut ws).await.is_empty());
            sockets.push(ws);
        }
        send_and_hang_up(&s, "DELETE", "/device/", &alice.token, hang_up_after(round)).await;
        let gone = carried_out(|| async {
            let (_, devices) = s.get("/v2/devices", &alice.token).await;
            devices.as_array().is_some_and(Vec::is_empty)
        })
        .await;
        if gone {
            carried += 1;
        } else {
            let (status, body) = s.call("DELETE", "/device/", Some(&alice.token), None).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        }
        for (ws, device) in sockets.iter_mut().zip(1..) {
            assert_eq!(
                close_code(ws).await,
                DEVICE_REMOVED,
                "round {round}, device {device}"
            );
        }
        let (status, body) = s
            .delete(
                "/auth/users/me",
                &alice.token,
                json!({"current_password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    assert!(
        carried > 0,
        "no abandoned delete was carried out: the test proved nothing"
    );
}

#[tokio::test]
async fn a_send_reaches_the_open_socket_even_when_the_sender_hangs_up_at_once() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let mut ws = ws_open(&s, &bob).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    let mut carried = 0;
    for round in 0..40 {
        let text = format!("round {round}.");
        let body = json!({"recipient": "bob", "message": message_text(22, &text)});
        let path = messages_path(&alice);
        send_and_hang_up_with(&s, "POST", &path, &alice.token, &body, hang_up_after(round)).await;
        let stored = carried_out(|| async {
            let (_, queue) = s.get("/messages/22", &bob.token).await;
            queue.to_string().contains(&text)
        })
        .await;
        if !stored {
            continue;
        }
        carried += 1;
        // Frames of earlier rounds whose send was carried out late may come first. The push
        // comes with the send, not with a re-read of the queue.
        loop {
            let frame = tokio::time::timeout(AT_ONCE, next_frame(&mut ws))
                .await
                .unwrap_or_else(|_| panic!("round {round}: stored, but not pushed"));
            assert_eq!(frame["type"], "message", "{frame}");
            if frame["message"]["content"]
                .as_str()
                .is_some_and(|c| c.contains(&text))
            {
                break;
            }
        }
    }
    assert!(
        carried > 0,
        "no abandoned send was carried out: the test proved nothing"
    );
}

#[tokio::test]
async fn a_password_change_closes_the_sockets_of_older_tokens() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let mut sockets = Vec::new();
    for device in [&alice, &second] {
        let mut ws = ws_open(&s, device).await;
        assert!(read_backlog(&mut ws).await.is_empty());
        sockets.push(ws);
    }
    let body = json!({"current_password": PASSWORD, "new_password": "Another-tangerine-77"});
    let (status, answer) = s.post("/auth/password", &alice.token, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    for (ws, device) in sockets.iter_mut().zip(1..) {
        assert_eq!(close_code(ws).await, TOKEN_REVOKED, "device {device}");
    }
    // A socket opened with a token of the new password stays.
    let fresh = TestUser {
        token: s.login("alice", "Another-tangerine-77").await,
        ..alice.device(11)
    };
    let mut ws = ws_open(&s, &fresh).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    assert_silent(&mut ws, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_operators_set_password_closes_the_sockets_of_older_tokens() {
    let s = TestServer::start().await;
    let (alice, _) = alice_and_bob(&s).await;
    let mut ws = ws_open(&s, &alice).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    let command =
        signal_server::config::Command::Users(signal_server::config::UsersCommand::SetPassword {
            username: "alice".into(),
            password: "Operator-chosen-88".into(),
        });
    let mut out = Vec::new();
    signal_server::admin::execute(&s.app, command, &mut out)
        .await
        .expect("set-password");
    assert_eq!(close_code(&mut ws).await, TOKEN_REVOKED);
}

#[tokio::test]
async fn a_socket_closes_when_its_token_expires() {
    let s = TestServer::start_with(&["--no-rate-limit", "--token-ttl", "2"]).await;
    let (alice, _) = alice_and_bob(&s).await;
    let mut ws = ws_open(&s, &alice).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    assert_eq!(close_code(&mut ws).await, TOKEN_EXPIRED);
}

#[tokio::test]
async fn a_linked_device_token_acts_as_that_device_only_and_dies_with_it() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    // Its own routes work.
    let (status, body) = s.get(&messages_path(&second), &second.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.get("/v2/devices", &second.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Another device's regId: not its device.
    let answer = s
        .call("GET", &messages_path(&alice), Some(&second.token), None)
        .await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "device_changed",
        "the primary's queue",
    );
    // What changes the account is the primary's.
    let body = alice.link_body(13, 0, 0);
    let body = serde_json::to_value(&body).expect("json");
    for (method, path, body) in [
        ("POST", "/v2/devices", Some(body)),
        ("DELETE", "/v2/devices/1", None),
        ("DELETE", "/device/", None),
        (
            "POST",
            "/auth/password",
            Some(json!({"current_password": PASSWORD, "new_password": "Whatever-else-99"})),
        ),
        (
            "DELETE",
            "/auth/users/me",
            Some(json!({"current_password": PASSWORD})),
        ),
    ] {
        let answer = s
            .call(method, path, Some(&second.token), body.as_ref())
            .await;
        assert_error(
            &answer,
            StatusCode::FORBIDDEN,
            "linked_device",
            format!("{method} {path}"),
        );
    }
    assert_eq!(
        s.get("/v2/devices", &alice.token)
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Refreshed, it stays bound.
    let (status, refreshed) = s
        .post("/auth/jwt/refresh", "", json!({"token": second.token}))
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let refreshed = refreshed["token"].as_str().expect("token").to_string();
    let answer = s
        .call("GET", &messages_path(&alice), Some(&refreshed), None)
        .await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "device_changed",
        "refreshed",
    );

    // Unlinked (by itself), none of its tokens works, not even after its id is reused.
    let (status, body) = s
        .call("DELETE", "/v2/devices/2", Some(&second.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (id, again) = s.link_device(&alice, 12, 0, 0).await;
    assert_eq!(id, 2, "the id and the registrationId come back");
    for token in [&second.token, &refreshed] {
        let (status, body) = s.get(&messages_path(&second), token).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &json!("not_authenticated")),
            "a token of the unlinked device"
        );
        let (status, body) = s
            .post("/auth/jwt/refresh", "", json!({"token": token}))
            .await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_token"))
        );
    }
    let (status, body) = s.get(&messages_path(&again), &again.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_login_with_a_device_id_gets_a_token_bound_to_that_device() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let body = json!({"username": "alice", "password": PASSWORD, "deviceId": 2});
    let (status, answer) = s.post("/auth/jwt/create", "", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let token = answer["token"].as_str().expect("token");
    let (status, _) = s.get(&messages_path(&second), token).await;
    assert_eq!(status, StatusCode::OK);
    let answer = s
        .call("GET", &messages_path(&alice), Some(token), None)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "device_changed", "bound");
    let body = json!({"username": "alice", "password": PASSWORD, "deviceId": 9});
    let (status, answer) = s.post("/auth/jwt/create", "", body).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::NOT_FOUND, &json!("no_such_device"))
    );
    let body = json!({"username": "alice", "password": "wrong", "deviceId": 9});
    let (status, answer) = s.post("/auth/jwt/create", "", body).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_credentials")),
        "the password is checked first"
    );
    let body = json!({"username": "alice", "password": PASSWORD, "deviceId": "two"});
    let answer = s.call("POST", "/auth/jwt/create", None, Some(&body)).await;
    assert_invalid(&answer, "deviceId", "a deviceId that is not a number");
}
