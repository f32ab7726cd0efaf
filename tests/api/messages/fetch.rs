//! `GET /messages/<regId>[?limit=N]`: the queue oldest first, in pages of at most 1000; and every
//! message route with and without a trailing slash.

use super::*;
use crate::helpers::*;
use crate::websocket::{backlog, refused, ws_connect};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn get_lists_the_queue_oldest_first_in_the_201_shape_without_deleting() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
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
    let (alice, bob) = alice_and_bob(&s).await;
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
    let (alice, bob) = alice_and_bob(&s).await;
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
    let (alice, bob) = alice_and_bob(&s).await;
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
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "invalid_data",
            format!("limit={limit:?}"),
        );
        assert!(res["errors"]["limit"].is_array(), "limit={limit:?}: {res}");
    }
}

#[tokio::test]
async fn every_message_route_answers_with_and_without_trailing_slash() {
    let s = TestServer::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
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
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "device_changed",
            format!("GET /messages/23{slash}"),
        );
        let (status, res) =
            refused(ws_connect(&s, &format!("/messages/23/ws{slash}"), Some(&bob.token)).await);
        assert_eq!(status, 403, "{res}");
    }
}
