//! Live delivery over WebSocket (`/messages/<regId>/ws`), as docs/API.md describes it: the
//! upgrade and its refusals, the backlog then `queue_empty`, live messages, acks, one
//! connection per device, and closing when the device or account goes.

use std::time::Duration;

use crate::helpers::*;
use crate::messages::{
    alice_and_bob, assert_deleted, id, ids, queue, send, send_all, wait_for_queue,
};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};

/// How long any single wait on the server may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// Connects a WebSocket to `path`, with `Authorization: Bearer <token>` when given.
pub(crate) async fn ws_connect(
    s: &TestServer,
    path: &str,
    token: Option<&str>,
) -> Result<Ws, WsError> {
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
pub(crate) fn refused(result: Result<Ws, WsError>) -> (u16, Value) {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => crate::helpers::refusal(e),
    }
}

/// Reads the backlog: message frames up to `queue_empty`; answers the messages.
pub(crate) async fn backlog(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let frame = next_frame(ws).await;
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

async fn ack(ws: &mut Ws, ids: &[u64]) {
    ws.send(Frame::text(json!({"type": "ack", "ids": ids}).to_string()))
        .await
        .expect("send ack");
}

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
    let (alice, bob) = alice_and_bob(&s).await;
    let m = send(&s, &alice, &bob, "via query").await;
    let mut ws = ws_connect(&s, &format!("/messages/22/ws?token={}", bob.token), None)
        .await
        .expect("upgrade with ?token=");
    assert_eq!(backlog(&mut ws).await, vec![m]);
}

#[tokio::test]
async fn ws_sends_the_backlog_oldest_first_then_queue_empty() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let carol = s.user_with_device("carol", 33, 0, 0).await;

    // Empty queue: just queue_empty.
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(next_frame(&mut ws).await, json!({"type": "queue_empty"}));
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
            next_frame(&mut ws).await,
            json!({"type": "message", "message": m})
        );
    }
    assert_eq!(next_frame(&mut ws).await, json!({"type": "queue_empty"}));
    assert_eq!(
        queue(&s, &bob).await,
        sent,
        "delivery alone deletes nothing"
    );
}

#[tokio::test]
async fn ws_delivers_a_new_message_live() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let old = send(&s, &alice, &bob, "old").await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![old]);
    for i in 0..3 {
        let m = send(&s, &alice, &bob, &format!("live {i}")).await;
        assert_eq!(
            next_frame(&mut ws).await,
            json!({"type": "message", "message": m})
        );
    }
    // A message to someone else does not show up here.
    send(&s, &bob, &alice, "not for bob").await;
    let own = send(&s, &bob, &bob, "for bob").await;
    assert_eq!(
        next_frame(&mut ws).await,
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
        let frame = next_frame(&mut ws).await;
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
    let (alice, bob) = alice_and_bob(&s).await;
    let [m1, m2, m3] = send_all(&s, &alice, &bob, ["one", "two", "three"]).await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(ids(&backlog(&mut ws).await), [m1, m2, m3]);
    ack(&mut ws, &[m1, m3]).await;
    wait_for_queue(&s, &bob, &[m2]).await;
    // An ack of unknown ids is harmless, and the socket keeps working.
    ack(&mut ws, &[999_999_999]).await;
    let m4 = send(&s, &alice, &bob, "four").await;
    assert_eq!(
        next_frame(&mut ws).await,
        json!({"type": "message", "message": m4})
    );
    ack(&mut ws, &[m2, id(&m4)]).await;
    wait_for_queue(&s, &bob, &[]).await;
}

#[tokio::test]
async fn ws_reads_frames_far_larger_than_its_read_buffer() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let [m1, m2] = send_all(&s, &alice, &bob, ["one", "two"]).await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(ids(&backlog(&mut ws).await), [m1, m2]);
    // An ack padded to exactly the frame limit (--max-body-bytes), many times the socket's
    // 4 KiB read buffer: read whole and applied.
    let limit = usize::try_from(s.app.max_body()).unwrap();
    let ack = json!({"type": "ack", "ids": [m1], "pad": ""}).to_string();
    let pad = "x".repeat(limit - ack.len());
    let padded = ack.replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#));
    assert_eq!(padded.len(), limit);
    ws.send(Frame::text(padded))
        .await
        .expect("send the padded ack");
    wait_for_queue(&s, &bob, &[m2]).await;
    // A large message still comes live over the same socket.
    let m3 = send(&s, &alice, &bob, &"y".repeat(60_000)).await;
    assert_eq!(
        next_frame(&mut ws).await,
        json!({"type": "message", "message": m3})
    );
}

#[tokio::test]
async fn ws_redelivers_an_unacknowledged_message_on_the_next_connection() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let queued = send(&s, &alice, &bob, "queued").await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![queued.clone()]);
    let live = send(&s, &alice, &bob, "live").await;
    assert_eq!(
        next_frame(&mut ws).await,
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
    let (alice, bob) = alice_and_bob(&s).await;
    let mut old = ws_open(&s, &bob).await;
    assert!(backlog(&mut old).await.is_empty());
    let mut new = ws_connect(&s, &format!("/messages/22/ws?token={}", bob.token), None)
        .await
        .expect("second upgrade");
    assert!(backlog(&mut new).await.is_empty());
    wait_closed(&mut old).await;
    let m = send(&s, &alice, &bob, "to the newest").await;
    assert_eq!(
        next_frame(&mut new).await,
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
    wait_closed(&mut ws).await;
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
    wait_closed(&mut ws).await;
}

#[tokio::test]
async fn ws_a_user_cannot_ack_another_users_messages() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
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
    assert_eq!(next_frame(&mut ws).await["message"]["id"], to_alice);
    ack(&mut ws, &[to_bob, to_alice]).await;
    wait_for_queue(&s, &alice, &[]).await;
    assert_eq!(ids(&queue(&s, &bob).await), [to_bob]);
}

#[tokio::test]
async fn no_user_reads_deletes_or_acks_another_users_messages() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let eve = s.user_with_device("eve", 66, 0, 0).await;
    let for_bob = send(&s, &alice, &bob, "secret").await;

    // Read: Eve's queue is her own; Bob's path is not hers.
    assert!(queue(&s, &eve).await.is_empty());
    let (status, res) = s.get("/messages/22", &eve.token).await;
    assert_error(
        &(status, &res),
        StatusCode::FORBIDDEN,
        "device_changed",
        "eve reads bob's queue",
    );
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
    assert_deleted(
        &s,
        &eve,
        json!([id(&for_bob)]),
        json!(["not_message_owner"]),
    )
    .await;
    let (status, res) = s
        .delete("/messages/22", &eve.token, json!([id(&for_bob)]))
        .await;
    assert_error(
        &(status, &res),
        StatusCode::FORBIDDEN,
        "device_changed",
        "eve deletes from bob's queue",
    );
    ack(&mut eve_ws, &[id(&for_bob), id(&live_for_bob)]).await;
    let own = id(&send(&s, &alice, &eve, "for eve").await);
    assert_eq!(next_frame(&mut eve_ws).await["message"]["id"], own);
    ack(&mut eve_ws, &[own]).await;
    wait_for_queue(&s, &eve, &[]).await;
    assert_eq!(queue(&s, &bob).await, vec![for_bob, live_for_bob]);
    assert_silent(&mut bob_ws, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn graceful_stop_completes_while_a_websocket_is_open() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let m = send(&s, &alice, &bob, "still here after restart").await;
    let mut ws = ws_open(&s, &bob).await;
    assert_eq!(backlog(&mut ws).await, vec![m]);
    // The client stays connected and does not read while the server stops.
    timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("stop() hung with a WebSocket open");
    wait_closed(&mut ws).await;
}
