//! Multi-device accounts on several instances of one PostgreSQL database: the device cap under
//! links racing on every instance, every queue alike under sends racing on every instance, and
//! each device's copy delivered live to its socket on whichever instance it is, whose unlink
//! there closes it. Runs on PostgreSQL only.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::to;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `POST /v2/messages/22` from `token` to alice's three devices (regIds 11, 12, 13).
fn to_alice(content: &str) -> Value {
    let messages: Vec<Value> = [(1, 11), (2, 12), (3, 13)]
        .map(|(id, reg_id)| to(id, reg_id, content))
        .into();
    json!({"recipient": "alice", "messages": messages})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_racing_on_every_instance_stop_at_the_device_cap() {
    let Some(c) = instances(3, &["--max-devices", "4"]).await else {
        return;
    };
    let alice = Arc::new(c.nodes[0].user_with_device("alice", 11, 0, 0).await);
    let mut tasks = Vec::new();
    for i in 0..9u32 {
        let (api, alice) = (c.nodes[i as usize % 3].api(), alice.clone());
        tasks.push(tokio::spawn(async move {
            let linked = api
                .client()
                .with_token(&alice.token)
                .link_device(&alice.link_body(100 + i, 0, 0))
                .await;
            linked
                .map(|l| l.device_id)
                .map_err(|e| e.status_code().map(|(s, c)| (s, c.to_string())))
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        match task.await.expect("link task") {
            Ok(id) => ids.push(id),
            Err(refusal) => assert_eq!(refusal, Some((403, "too_many_devices".into()))),
        }
    }
    ids.sort();
    assert_eq!(ids, [2, 3, 4]);
    for node in &c.nodes {
        let devices = node
            .client()
            .with_token(&alice.token)
            .devices()
            .await
            .expect("devices");
        let listed: Vec<u32> = devices.iter().map(|d| d.device_id).collect();
        assert_eq!(listed, [1, 2, 3, 4], "on {}", node.base);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_racing_on_every_instance_fill_every_queue_alike() {
    let Some(c) = instances(3, &["--max-queued-messages", "10"]).await else {
        return;
    };
    let alice = c.nodes[0].user_with_device("alice", 11, 0, 0).await;
    for reg_id in [12, 13] {
        link_device(&c.nodes[1].client(), &alice, reg_id, 0, 0).await;
    }
    let bob = Arc::new(c.nodes[2].user_with_device("bob", 22, 0, 0).await);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (api, bob) = (c.nodes[i % 3].api(), bob.clone());
        tasks.push(tokio::spawn(async move {
            let content = format!("m{i}");
            let (status, body) = api
                .post("/v2/messages/22", &bob.token, to_alice(&content))
                .await;
            (content, status, body)
        }));
    }
    let mut accepted = BTreeSet::new();
    for task in tasks {
        let (content, status, body) = task.await.expect("send task");
        match status {
            StatusCode::CREATED => assert!(accepted.insert(content)),
            _ => assert_eq!(
                (status, &body["code"]),
                (StatusCode::TOO_MANY_REQUESTS, &json!("queue_full")),
                "{body}"
            ),
        }
    }
    assert_eq!(accepted.len(), 10, "the cap, exactly");
    for reg_id in [11, 12, 13] {
        let (status, queue) = c.nodes[reg_id as usize % 3]
            .get(&format!("/messages/{reg_id}"), &alice.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{queue}");
        let got: BTreeSet<String> = queue
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m["content"].as_str().expect("content").to_string())
            .collect();
        assert_eq!(got, accepted, "regId {reg_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_device_gets_its_copy_live_on_its_own_instance_until_unlinked_there() {
    let Some(c) = instances(3, &[]).await else {
        return;
    };
    let alice = c.nodes[0].user_with_device("alice", 11, 0, 0).await;
    for reg_id in [12, 13] {
        link_device(&c.nodes[0].client(), &alice, reg_id, 0, 0).await;
    }
    let bob = c.nodes[0].user_with_device("bob", 22, 0, 0).await;
    // Device n's socket is on instance n - 1.
    let mut sockets = Vec::new();
    for (node, reg_id) in c.nodes.iter().zip([11, 12, 13]) {
        let mut ws = ws_connect(
            &node.ws_url(&format!("/messages/{reg_id}/ws")),
            &alice.token,
        )
        .await;
        assert!(read_backlog(&mut ws).await.is_empty());
        sockets.push(ws);
    }
    for (sender, round) in c.nodes.iter().zip(0..) {
        let content = format!("round {round}");
        let (status, sent) = sender
            .post("/v2/messages/22", &bob.token, to_alice(&content))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sent}");
        for (ws, id) in sockets.iter_mut().zip(1..) {
            let frame = next_frame(ws).await;
            let m = &frame["message"];
            assert_eq!(
                (&m["content"], &m["recipientAddress"]),
                (&json!(content), &json!(format!("alice.{id}"))),
                "device {id}: {frame}"
            );
        }
    }
    // Unlinked through the instance that holds neither its socket nor the primary's.
    let unlinked = c.nodes[2]
        .client()
        .with_token(&alice.token)
        .unlink_device(2)
        .await;
    unlinked.expect("unlink 2");
    wait_closed(&mut sockets[1]).await;
    let messages = vec![to(1, 11, "after"), to(3, 13, "after")];
    let (status, sent) = c.nodes[1]
        .post(
            "/v2/messages/22",
            &bob.token,
            json!({"recipient": "alice", "messages": messages}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    for i in [0, 2] {
        assert_eq!(
            next_frame(&mut sockets[i]).await["message"]["content"],
            "after"
        );
    }
}

/// A close signal lost between instances (their listening connections cut just before the
/// unlink) still closes the unlinked device's socket once its instance resyncs, and a device
/// linked again under the same id and registrationId never gets its messages on the old socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unlink_whose_signal_is_lost_still_closes_the_socket_on_the_other_instance() {
    let Some(c) = instances(2, &[]).await else {
        return;
    };
    let alice = c.nodes[0].user_with_device("alice", 11, 0, 0).await;
    let (_, second) = link_device(&c.nodes[0].client(), &alice, 12, 0, 0).await;
    let bob = c.nodes[1].user_with_device("bob", 22, 0, 0).await;
    let mut ws = ws_connect(&c.nodes[0].ws_url("/messages/12/ws"), &second.token).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    assert!(c.cut_listeners().await >= 2, "both instances listen");
    c.nodes[1]
        .client()
        .with_token(&alice.token)
        .unlink_device(2)
        .await
        .expect("unlink 2");
    let (id, _) = link_device(&c.nodes[1].client(), &alice, 12, 0, 0).await;
    assert_eq!(id, 2, "the same id and registrationId again");
    let messages = vec![to(1, 11, "new"), to(2, 12, "new")];
    let (status, sent) = c.nodes[1]
        .post(
            "/v2/messages/22",
            &bob.token,
            json!({"recipient": "alice", "messages": messages}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    // Bounded by the resync period: the old socket closes without the new device's message.
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(90), ws.next()).await;
        match next.expect("the old socket is still open after the resync period") {
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4001));
                break;
            }
            None | Some(Err(_)) => panic!("dropped without a close frame"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("the old socket got {other:?}"),
        }
    }
}
