//! Concurrency against the real server: requests of one user that race each other (uploads and
//! sends against a device delete, a device create against the user's delete) must leave no
//! record behind that no device or user can reach, as the totals of `stats` show. Bounded: a few hundred
//! requests per test, no timing assertions.

mod common;

use common::{ec_prekeys, message_text, TestServer, TestUser};
use reqwest::StatusCode;
use serde_json::json;
use signal_server::storage::Totals;

/// Rounds of each race: the window is a few sled operations wide, so it takes many tries.
const ROUNDS: usize = 40;

/// Totals as `stats` reports them (counted once, then kept by the write verbs).
async fn totals(s: &TestServer) -> Totals {
    s.app.storage.count_totals().await.expect("count");
    s.app.storage.totals().expect("totals")
}

async fn recreate_device(s: &TestServer, user: &TestUser) {
    let body = user.device_body(1, 0, 0, true);
    let (status, res) = s
        .post(&format!("/device/{}", user.reg_id), &user.token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "create device: {res}");
}

async fn delete_device(s: &TestServer, user: &TestUser) -> StatusCode {
    let path = format!("/device/{}", user.reg_id);
    s.call("DELETE", &path, Some(&user.token), None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_racing_a_device_delete_leave_no_keys_behind() {
    let s = TestServer::start().await;
    let u = s.user_with_device("racer", 21, 0, 0).await;
    for round in 0..ROUNDS {
        let uploads = (0..4u32).map(|i| {
            // Four uploads of 24 keys stay under the default cap of 100.
            let first = (round as u32) * 1000 + i * 100 + 1;
            s.post("/prekeys/21", &u.token, ec_prekeys(first..first + 24))
        });
        let (answers, deleted) = tokio::join!(
            futures_util::future::join_all(uploads),
            delete_device(&s, &u)
        );
        assert_eq!(deleted, StatusCode::NO_CONTENT, "round {round}");
        for (status, body) in answers {
            // Before the delete, or refused for want of a device.
            assert!(
                status == StatusCode::OK || body["code"] == "no_device",
                "round {round}: {status} {body}"
            );
        }
        // No device anywhere: no key may be left in stock, counted or not.
        assert_eq!(
            totals(&s).await.prekeys,
            0,
            "round {round}: keys left behind"
        );
        recreate_device(&s, &u).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_racing_a_device_delete_leave_no_messages_behind() {
    let s = TestServer::start().await;
    let from = s.user_with_device("sender", 31, 0, 0).await;
    let to = s.user_with_device("target", 32, 0, 0).await;
    let body = json!({"recipient": "target", "message": message_text(32, "hello")});
    for round in 0..ROUNDS * 3 {
        let sends = (0..16).map(|_| s.post("/messages/31", &from.token, body.clone()));
        let (answers, deleted) = tokio::join!(
            futures_util::future::join_all(sends),
            delete_device(&s, &to)
        );
        assert_eq!(deleted, StatusCode::NO_CONTENT, "round {round}");
        for (status, res) in answers {
            assert!(
                status == StatusCode::CREATED || res["code"] == "no_device",
                "round {round}: {status} {res}"
            );
        }
        // The only device that could hold messages is gone: nothing may stay queued.
        assert_eq!(
            totals(&s).await.queued_messages,
            0,
            "round {round}: messages left behind"
        );
        recreate_device(&s, &to).await;
    }
}
