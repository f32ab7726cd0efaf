//! Live delivery to a multi-device account: one socket per device (a device's socket does not
//! replace another's), each getting its own copy of a send once; unlinking a device closes its
//! socket only, and the old `DELETE /device/` closes every one.

use std::time::Duration;

use super::*;
use crate::helpers::*;
use crate::messages::{queue, send, wait_for_queue};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;

/// A live socket of each device, its backlog read.
async fn open_all(s: &TestServer, devices: &[&TestUser]) -> Vec<Ws> {
    let mut sockets = Vec::new();
    for d in devices {
        let mut ws = ws_open(s, d).await;
        assert!(read_backlog(&mut ws).await.is_empty(), "regId {}", d.reg_id);
        sockets.push(ws);
    }
    wait_for_open_sockets(s, devices.len(), Duration::from_secs(10)).await;
    sockets
}

#[tokio::test]
async fn each_device_socket_gets_its_own_copy_of_a_send_once() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    // A backlog per device: each socket starts with its own queue.
    let queued = sent_v2(
        &s,
        &bob,
        "alice",
        vec![to(1, 11, "q1"), to(2, 12, "q2"), to(3, 13, "q3")],
    )
    .await;
    let mut sockets = Vec::new();
    for (device, id) in [(&alice, 1), (&second, 2), (&third, 3)] {
        let mut ws = ws_open(&s, device).await;
        assert_eq!(
            read_backlog(&mut ws).await,
            [id_for(&queued, id)],
            "device {id}"
        );
        sockets.push(ws);
    }
    wait_for_open_sockets(&s, 3, Duration::from_secs(10)).await;
    let live = sent_v2(
        &s,
        &bob,
        "alice",
        vec![to(1, 11, "l1"), to(2, 12, "l2"), to(3, 13, "l3")],
    )
    .await;
    for (ws, id) in sockets.iter_mut().zip(1..) {
        let frame = next_frame(ws).await;
        assert_eq!(frame["type"], "message", "device {id}: {frame}");
        let m = &frame["message"];
        assert_eq!(m["id"], id_for(&live, id), "device {id}: {frame}");
        assert_eq!(
            (&m["content"], &m["recipientAddress"]),
            (&json!(format!("l{id}")), &json!(format!("alice.{id}")))
        );
    }
    for ws in sockets.iter_mut() {
        assert_silent(ws, Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_message_for_one_device_reaches_that_devices_socket_only() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut sockets = open_all(&s, &[&alice, &second]).await;
    // The old send reaches the primary; a sync copy from the primary reaches device 2.
    let old = send(&s, &bob, &alice, "old route").await;
    assert_eq!(next_frame(&mut sockets[0]).await["message"], old);
    let sync = sent_v2(&s, &alice, "alice", vec![to(2, 12, "sync")]).await;
    let frame = next_frame(&mut sockets[1]).await;
    assert_eq!(frame["message"]["id"], id_for(&sync, 2), "{frame}");
    assert_eq!(frame["message"]["senderAddress"], "alice.1");
    for ws in sockets.iter_mut() {
        assert_silent(ws, Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_devices_socket_does_not_replace_another_devices_socket() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut sockets = open_all(&s, &[&alice, &second]).await;
    let m = send(&s, &bob, &alice, "both open").await;
    assert_eq!(
        next_frame(&mut sockets[0]).await["message"],
        m,
        "the primary's socket"
    );
    // A newer socket of device 2 replaces device 2's older one, and only that one.
    let mut newer = ws_open(&s, &second).await;
    assert!(read_backlog(&mut newer).await.is_empty());
    wait_closed(&mut sockets[1]).await;
    wait_for_open_sockets(&s, 2, Duration::from_secs(10)).await;
    let m = send(&s, &bob, &alice, "still open").await;
    assert_eq!(
        next_frame(&mut sockets[0]).await["message"],
        m,
        "the primary's socket"
    );
}

#[tokio::test]
async fn an_ack_on_one_devices_socket_deletes_from_that_devices_queue_only() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let sent = sent_v2(&s, &bob, "alice", vec![to(1, 11, "a"), to(2, 12, "b")]).await;
    let (one, two) = (id_for(&sent, 1), id_for(&sent, 2));
    let mut ws = ws_open(&s, &second).await;
    assert_eq!(read_backlog(&mut ws).await, [two]);
    let ack = |ids: Vec<u64>| Frame::text(json!({"type": "ack", "ids": ids}).to_string());
    ws.send(ack(vec![one])).await.expect("ack");
    ws.send(ack(vec![two])).await.expect("ack");
    // Acks on one socket are handled in order: once its own is gone, the other was handled.
    wait_for_queue(&s, &second, &[]).await;
    assert_eq!(crate::messages::ids(&queue(&s, &alice).await), [one]);
}

#[tokio::test]
async fn unlinking_a_device_closes_its_socket_only() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let mut sockets = open_all(&s, &[&alice, &second, &third]).await;
    s.client_of(&alice)
        .unlink_device(2)
        .await
        .expect("unlink 2");
    wait_closed(&mut sockets[1]).await;
    wait_for_open_sockets(&s, 2, Duration::from_secs(10)).await;
    let sent = sent_v2(&s, &bob, "alice", vec![to(1, 11, "a"), to(3, 13, "c")]).await;
    for (i, id) in [(0, 1), (2, 3)] {
        let frame = next_frame(&mut sockets[i]).await;
        assert_eq!(
            frame["message"]["id"],
            id_for(&sent, id),
            "device {id}: {frame}"
        );
    }
}

#[tokio::test]
async fn the_old_device_delete_closes_the_socket_of_every_device() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 0, 0).await;
    let mut sockets = open_all(&s, &[&alice, &second, &third]).await;
    let (status, _) = s.call("DELETE", "/device/", Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for ws in sockets.iter_mut() {
        wait_closed(ws).await;
    }
    wait_for_open_sockets(&s, 0, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn deleting_the_account_closes_the_socket_of_every_device() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let mut sockets = open_all(&s, &[&alice, &second]).await;
    let body = json!({"current_password": PASSWORD});
    let (status, _) = s.delete("/auth/users/me", &alice.token, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for ws in sockets.iter_mut() {
        wait_closed(ws).await;
    }
    wait_for_open_sockets(&s, 0, Duration::from_secs(10)).await;
}
