//! Hostile WebSocket frames against the binary: nothing but an ack of the caller's own ids
//! deletes anything, and a frame over the size limit ends only that socket.

use std::time::Duration;

use super::{assert_clean_log, fixture, send};
use crate::helpers::{message_ids, read_backlog, ws_connect, Binary, TestUser, Ws, BINARY_BOUND};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Opens `user`'s live socket on the binary and reads its backlog; the socket and the ids.
async fn ws_backlog(s: &Binary, user: &TestUser) -> (Ws, Vec<u64>) {
    let url = s.ws_url(&format!("/messages/{}/ws", user.reg_id));
    let mut ws = ws_connect(&url, &user.token).await;
    let ids = read_backlog(&mut ws).await;
    (ws, ids)
}

/// The ids queued for `user`.
async fn listed(s: &Binary, user: &TestUser) -> Vec<u64> {
    let path = format!("/messages/{}", user.reg_id);
    let (status, body) = s.call("GET", &path, Some(&user.token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    message_ids(&body)
}

/// Binary frames, garbage text, acks of someone else's ids, of huge and odd id lists, and a
/// frame over the size limit: the socket ignores what is not an ack of the caller's own ids,
/// deletes nothing else, and a too-large frame ends only that socket.
#[tokio::test]
async fn hostile_websocket_frames_delete_nothing_but_own_acks() {
    use tokio_tungstenite::tungstenite::Message as Frame;
    let (_dir, s, alice, bob) = fixture().await;
    let (_, bob_ids) = ws_backlog(&s, &bob).await;
    let (mut ws, alice_ids) = ws_backlog(&s, &alice).await;
    assert_eq!((alice_ids.len(), bob_ids.len()), (1, 1));
    let huge: Vec<u64> = (100_000..105_000).chain([u64::MAX]).collect();
    let frames = vec![
        Frame::binary(
            json!({"type": "ack", "ids": alice_ids})
                .to_string()
                .into_bytes(),
        ),
        Frame::text("not json"),
        Frame::text(r#"{"type":"ack","ids":"#),
        Frame::text(json!({"type": "ack", "ids": bob_ids}).to_string()),
        Frame::text(json!({"type": "ack", "ids": huge}).to_string()),
        Frame::text(r#"{"type":"ack","ids":[-1,1.5,"x",18446744073709551616]}"#),
        Frame::text(r#"{"type":"ack","ids":null}"#),
        Frame::text(r#"{"type":"ACK","ids":[1]}"#),
        Frame::text(format!(r#"{{"type":"ack","ids":[{}]}}"#, "[".repeat(5000))),
        Frame::text("\u{0}\u{feff}"),
        Frame::Ping(vec![1; 125].into()),
        Frame::Pong(vec![2; 10].into()),
    ];
    for frame in frames {
        ws.send(frame).await.expect("send");
    }
    // Still served: a message sent now arrives live.
    let live_id = send(&s, &bob, &alice, "live").await;
    loop {
        let frame = tokio::time::timeout(BINARY_BOUND, ws.next())
            .await
            .expect("live message timed out")
            .expect("socket open")
            .expect("frame");
        if let Frame::Text(text) = frame {
            let v: Value = serde_json::from_str(&text).expect("JSON frame");
            assert_eq!(v["message"]["id"].as_u64(), Some(live_id), "{v}");
            break;
        }
    }
    // A binary ack is not an ack; bob's id acked by alice stays bob's.
    assert_eq!(listed(&s, &alice).await, [alice_ids[0], live_id]);
    assert_eq!(listed(&s, &bob).await, bob_ids);
    // A frame over --max-body-bytes ends this socket, not the server.
    let big = "x".repeat((1 << 20) + 1);
    let _ = ws.send(Frame::text(big)).await;
    let ended = tokio::time::timeout(BINARY_BOUND, async {
        while let Some(Ok(_)) = ws.next().await {}
    });
    ended
        .await
        .expect("socket not closed after a too-large frame");
    assert_eq!(listed(&s, &alice).await, [alice_ids[0], live_id]);
    // A real ack still works on a new socket.
    let (mut ws, ids) = ws_backlog(&s, &alice).await;
    assert_eq!(ids, [alice_ids[0], live_id]);
    ws.send(Frame::text(json!({"type": "ack", "ids": ids}).to_string()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + BINARY_BOUND;
    while !listed(&s, &alice).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "ack not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed(&s, &bob).await, bob_ids);
    assert_clean_log(&s);
}
