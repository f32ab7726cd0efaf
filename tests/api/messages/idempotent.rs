//! Idempotent sends (`Idempotency-Key` on `POST /messages` and `POST /v2/messages`): a repeat
//! with the same key and body gets the first answer and queues and pushes nothing new; another
//! body is 422 `idempotency_key_reused`; a repeat while the first runs is 409
//! `request_in_progress`; a refused send is not remembered; keys are scoped to the sending
//! device and the route. On several PostgreSQL instances too.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::helpers::*;
use crate::linked::{alice_with_two, to};
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::client::{Client, Method};

/// `POST path` through `client` with `body` and `Idempotency-Key: key`: status and raw body.
async fn keyed(client: &Client, path: &str, key: &str, body: &Value) -> (StatusCode, Vec<u8>) {
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key),
    ];
    let a = client
        .raw(Method::POST, path, body.to_string().into_bytes(), &headers)
        .await
        .expect("an answer");
    (a.status, a.body)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

/// alice's send of `text` to bob (regId 22), as `POST /messages/11` takes it.
fn to_bob(text: &str) -> Value {
    json!({"recipient": "bob", "message": message_text(22, text)})
}

#[tokio::test]
async fn a_repeated_send_gets_the_first_answer_and_is_queued_and_pushed_once() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let mut ws = ws_open(&s, &bob).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    let client = s.client_of(&alice);
    let (status, first) = keyed(&client, "/messages/11", "send-1", &to_bob("hi")).await;
    assert_eq!(status, StatusCode::CREATED, "{}", json_of(&first));
    let pushed = next_frame(&mut ws).await;
    assert_eq!(pushed["message"]["id"], json_of(&first)["id"], "{pushed}");
    for _ in 0..2 {
        let (status, again) = keyed(&client, "/messages/11", "send-1", &to_bob("hi")).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(again, first, "the same bytes");
    }
    assert_silent(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(queue(&s, &bob).await, vec![json_of(&first)]);
    // Another key is another send.
    let (status, other) = keyed(&client, "/messages/11", "send-2", &to_bob("hi")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(json_of(&other)["id"], json_of(&first)["id"]);
    assert_eq!(queue(&s, &bob).await.len(), 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_and_stores_nothing() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let client = s.client_of(&alice);
    let (status, first) = keyed(&client, "/messages/11", "k", &to_bob("one")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, res) = keyed(&client, "/messages/11", "k", &to_bob("two")).await;
    assert_error(
        &(status, &json_of(&res)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "another body",
    );
    assert_eq!(queue(&s, &bob).await, vec![json_of(&first)]);
}

#[tokio::test]
async fn a_key_that_is_empty_too_long_or_not_printable_ascii_is_400_naming_the_header() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let long = "k".repeat(65);
    for bad in [&b""[..], long.as_bytes(), b"a\tb", b"caf\xc3\xa9"] {
        for path in ["/messages/11", "/v2/messages/11"] {
            let res = s
                .http
                .post(s.url(path))
                .bearer_auth(&alice.token)
                .header("content-type", "application/json")
                .header("idempotency-key", HeaderValue::from_bytes(bad).unwrap())
                .body(to_bob("hi").to_string())
                .send()
                .await
                .expect("request");
            let status = res.status();
            let body: Value = res.json().await.expect("JSON");
            let what = format!("{path} {bad:?}");
            assert_error(
                &(status, &body),
                StatusCode::BAD_REQUEST,
                "invalid_data",
                &what,
            );
            assert!(
                body["errors"]["Idempotency-Key"].is_array(),
                "{what}: {body}"
            );
        }
    }
    // The longest key is taken.
    let (status, _) = keyed(
        &s.client_of(&alice),
        "/messages/11",
        &long[1..],
        &to_bob("hi"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(queue(&s, &bob).await.len(), 1);
}

#[tokio::test]
async fn a_refused_send_is_not_remembered_and_its_retry_is_judged_afresh() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let client = s.client_of(&alice);
    let wrong = json!({"recipient": "bob", "message": message_text(99, "hi")});
    let (status, _) = keyed(&client, "/messages/11", "k", &wrong).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "recipient_identity_changed");
    let (status, first) = keyed(&client, "/messages/11", "k", &to_bob("hi")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "not 422: the refusal was not kept"
    );
    assert_eq!(queue(&s, &bob).await, vec![json_of(&first)]);
}

/// Sends `body` to `path` with one key from `n` tasks at once, through `clients` in turn:
/// every answer is the same 201 or 409 `request_in_progress`; answers the 201 body.
async fn racing(clients: Vec<Client>, n: usize, path: &str, body: Value) -> Vec<u8> {
    let body = Arc::new(body);
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, body, start) = (
            clients[i % clients.len()].clone(),
            body.clone(),
            start.clone(),
        );
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            keyed(&client, &path, "raced", &body).await
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        let (status, answer) = task.await.expect("task");
        match status {
            StatusCode::CREATED => created.push(answer),
            StatusCode::CONFLICT => {
                assert_eq!(json_of(&answer)["code"], "request_in_progress");
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&answer)),
        }
    }
    assert!(!created.is_empty(), "at least the first is 201");
    assert!(created.iter().all(|a| *a == created[0]), "one answer");
    created.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_repeats_at_once_queue_one_message() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let first = racing(vec![s.client_of(&alice)], 8, "/messages/11", to_bob("hi")).await;
    assert_eq!(queue(&s, &bob).await, vec![json_of(&first)]);
    let (status, again) = keyed(&s.client_of(&alice), "/messages/11", "raced", &to_bob("hi")).await;
    assert_eq!((status, again), (StatusCode::CREATED, first));
}

fn to_alice(content: &str) -> Value {
    json!({"recipient": "alice", "messages": [to(1, 11, content), to(2, 12, content)]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_send_to_several_devices_is_idempotent_too() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let client = s.client_of(&bob);
    let first = racing(vec![client.clone()], 8, "/v2/messages/22", to_alice("hi")).await;
    let (status, again) = keyed(&client, "/v2/messages/22", "raced", &to_alice("hi")).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    let (status, res) = keyed(&client, "/v2/messages/22", "raced", &to_alice("ho")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_of(&res)["code"], "idempotency_key_reused");
    let sent = json_of(&first);
    for (device, id) in [(&alice, 1), (&second, 2)] {
        let q = queue(&s, device).await;
        assert_eq!(ids(&q), [crate::linked::id_for(&sent, id)], "device {id}");
    }
    // The key is the sending device's and the route's: on the other route, or from another
    // device of the account, it is another send.
    let (status, _) = keyed(&client, "/messages/22", "raced", &to_alice("hi")).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "judged as a send of its own (no message)"
    );
    let to_bob = json!({"recipient": "bob", "messages": [to(1, 22, "hi")]});
    for from in [&alice, &second] {
        let path = format!("/v2/messages/{}", from.reg_id);
        let (status, _) = keyed(&s.client_of(from), &path, "raced", &to_bob).await;
        assert_eq!(status, StatusCode::CREATED, "from {}", from.reg_id);
    }
    assert_eq!(queue(&s, &bob).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_typed_client_sends_with_a_key() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let client = s.client_of(&alice);
    let text = message_text(22, "typed");
    let first = client
        .send_keyed(11, "bob", &text, Some("t"))
        .await
        .unwrap();
    let again = client
        .send_keyed(11, "bob", &text, Some("t"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(queue(&s, &bob).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeats_racing_on_two_instances_queue_one_message() {
    let Some(c) = instances(2, &[]).await else {
        return;
    };
    let alice = c.nodes[0].user_with_device("alice", 11, 0, 0).await;
    let bob = c.nodes[1].user_with_device("bob", 22, 0, 0).await;
    let clients: Vec<Client> = c
        .nodes
        .iter()
        .map(|n| n.api().client().with_token(&alice.token))
        .collect();
    let first = racing(clients.clone(), 8, "/messages/11", to_bob("hi")).await;
    for client in &clients {
        let (status, again) = keyed(client, "/messages/11", "raced", &to_bob("hi")).await;
        assert_eq!((status, &again), (StatusCode::CREATED, &first));
    }
    let (status, q) = c.nodes[0].get("/messages/22", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q, json!([json_of(&first)]));
}
