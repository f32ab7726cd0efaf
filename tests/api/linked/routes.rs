//! The `<regId>` routes with the registrationId of a linked device: `/prekeys`, `/kyberprekeys`,
//! `/signedprekey`, `GET`/`DELETE /messages` and the old send act on that device only; a
//! registrationId of another account's device is 403 `device_changed`; `GET /device/<regId>`
//! shows the device it names, or the primary.

use super::*;
use crate::helpers::*;
use crate::messages::{id, queue, send};
use crate::websocket::{refused, ws_connect};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn key_uploads_and_counts_with_a_linked_reg_id_act_on_that_device_only() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 2, 1).await;
    let (_, second) = s.link_device(&alice, 12, 0, 0).await;
    for slash in SLASHES {
        let path = format!("/prekeys/12{slash}");
        let (status, body) = s.post(&path, &second.token, ec_prekeys([1, 2, 3])).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["code"], "prekeys_stored");
        let path = format!("/kyberprekeys/12{slash}");
        let (status, body) = upload_kyber(&s, &second, &path, [1, 2]).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["code"], "kyber_prekeys_stored");
    }
    assert_eq!(
        counts(&s, &second).await,
        (3, 2),
        "keyIds 1..=3 and 1..=2, replaced once"
    );
    assert_eq!(counts(&s, &alice).await, (2, 1), "the primary's stock");
    let (status, body) = s.get("/prekeys/12/", &second.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"preKeyCount": 3, "kyberPreKeyCount": 2}));

    // The signed prekey of device 2 changes, checked against the account's identity.
    let (status, body) = s
        .post(
            "/signedprekey/12",
            &second.token,
            signed_ec(&alice.identity, 7),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::OK, &json!("signed_prekey_stored")),
        "{body}"
    );
    let stranger = signal_server::crypto::KeyPair::generate();
    let answer = s
        .post("/signedprekey/12/", &second.token, signed_ec(&stranger, 8))
        .await;
    assert_invalid_data(&answer, "a signed prekey signed by another key");
    let signed: Vec<u64> = listed(&s, &alice)
        .await
        .iter()
        .map(|d| d["signedPreKeyId"].as_u64().unwrap())
        .collect();
    assert_eq!(signed, [1, 7]);
}

#[tokio::test]
async fn the_prekey_cap_holds_per_device() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "5"]).await;
    let alice = s.user_with_device("alice", 11, 5, 5).await;
    let (_, second) = s.link_device(&alice, 12, 0, 0).await;
    let (status, body) = s
        .post("/prekeys/12", &second.token, ec_prekeys(1..=5))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "5 keys on device 2 beside 5 on the primary: {body}"
    );
    let (status, body) = upload_kyber(&s, &second, "/kyberprekeys/12", 1..=5).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = s.post("/prekeys/12", &second.token, ec_prekeys([6])).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "reached_max_prekeys",
        "a sixth EC key",
    );
    let answer = upload_kyber(&s, &second, "/kyberprekeys/12", [6]).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "reached_max_prekeys",
        "a sixth Kyber key",
    );
    assert_eq!(counts(&s, &second).await, (5, 5));
    assert_eq!(counts(&s, &alice).await, (5, 5));
}

#[tokio::test]
async fn message_routes_with_a_linked_reg_id_read_and_delete_that_devices_queue_only() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let both = sent_v2(
        &s,
        &bob,
        "alice",
        vec![to(1, 11, "first"), to(2, 12, "second")],
    )
    .await;
    let old = send(&s, &bob, &alice, "old route").await;
    let old_text = message_text(11, "old route");
    let mine = queue(&s, &second).await;
    assert_eq!(contents(&mine), ["second"]);
    assert_eq!(mine[0]["recipientAddress"], "alice.2");
    assert_eq!(
        contents(&queue(&s, &alice).await),
        ["first", old_text.as_str()]
    );
    let (status, page) = s.get("/messages/12/?limit=1", &second.token).await;
    assert_eq!(
        (status, page.as_array().map(Vec::len)),
        (StatusCode::OK, Some(1)),
        "{page}"
    );

    // Device 2 deletes its own message only; the primary's are not its to delete.
    let (one, two) = (id_for(&both, 1), id_for(&both, 2));
    let path = "/messages/12";
    let (status, outcome) = s
        .delete(path, &second.token, json!([one, id(&old), two]))
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(
        outcome,
        json!(["not_message_owner", "not_message_owner", "success"])
    );
    assert!(queue(&s, &second).await.is_empty());
    assert_eq!(
        contents(&queue(&s, &alice).await),
        ["first", old_text.as_str()]
    );
    let (status, outcome) = s
        .delete("/messages/11/", &alice.token, json!([two, one]))
        .await;
    assert_eq!(
        (status, outcome),
        (StatusCode::OK, json!(["non-existant_message", "success"]))
    );
}

#[tokio::test]
async fn the_old_send_from_a_linked_device_names_that_device_as_the_sender() {
    let s = TestServer::start().await;
    let [_alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let m = send(&s, &second, &bob, "from device 2").await;
    assert_eq!(m["senderAddress"], "alice.2");
    assert_eq!(m["senderRegistrationID"], 12);
    assert_eq!(queue(&s, &bob).await, vec![m]);
}

#[tokio::test]
async fn a_reg_id_of_another_accounts_device_is_403_device_changed() {
    let s = TestServer::start().await;
    let [alice, _second] = alice_with_two(&s, 1, 1).await;
    let bob = s.user_with_device("bob", 22, 1, 1).await;
    s.link_device(&bob, 23, 1, 1).await;
    for reg in [23, 22, 13] {
        let cases = [
            ("POST", format!("/prekeys/{reg}"), Some(ec_prekeys([50]))),
            ("GET", format!("/prekeys/{reg}"), None),
            (
                "POST",
                format!("/kyberprekeys/{reg}"),
                Some(json!({"kyberPreKeys": kyber_prekeys(&alice.identity, [50])})),
            ),
            (
                "POST",
                format!("/signedprekey/{reg}"),
                Some(signed_ec(&alice.identity, 50)),
            ),
            ("GET", format!("/messages/{reg}"), None),
            ("DELETE", format!("/messages/{reg}"), Some(json!([1]))),
            (
                "POST",
                format!("/messages/{reg}"),
                Some(json!({"recipient": "bob", "message": message_text(22, "x")})),
            ),
            (
                "POST",
                format!("/v2/messages/{reg}"),
                Some(json!({"recipient": "bob", "messages": [to(1, 22, "x"), to(2, 23, "x")]})),
            ),
            ("GET", format!("/prekeybundle/bob/{reg}"), None),
            ("GET", format!("/v2/prekeybundle/bob/{reg}"), None),
        ];
        for (method, path, body) in cases {
            let answer = s
                .call(method, &path, Some(&alice.token), body.as_ref())
                .await;
            assert_error(
                &answer,
                StatusCode::FORBIDDEN,
                "device_changed",
                format!("{method} {path}"),
            );
        }
        let (status, body) =
            refused(ws_connect(&s, &format!("/messages/{reg}/ws"), Some(&alice.token)).await);
        assert_eq!(
            (status, &body["code"]),
            (403, &json!("device_changed")),
            "ws of {reg}: {body}"
        );
    }
    assert_eq!(counts(&s, &bob).await, (1, 1), "bob's keys");
    assert_eq!(
        counts(&s, &bob.device(23)).await,
        (1, 1),
        "bob's second device's keys"
    );
    assert_queues_empty(&s, &[&bob, &bob.device(23)], "after the refused sends").await;
}

#[tokio::test]
async fn get_device_shows_the_device_its_reg_id_names_or_else_the_primary() {
    let s = TestServer::start().await;
    let [alice, _second] = alice_with_two(&s, 2, 0).await;
    s.post("/prekeys/12", &alice.token, ec_prekeys([3, 4, 5]))
        .await;
    for slash in SLASHES {
        let (status, info) = s.get(&format!("/device/12{slash}"), &alice.token).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        assert_eq!(
            (&info["address"], &info["registrationId"]),
            (&json!("alice.2"), &json!(12))
        );
        assert_eq!(info["preKeyCount"], 5, "device 2's own count");
        for path in ["/device/11", "/device/99", "/device/", "/device/x"] {
            let (status, info) = s
                .get(&format!("{path}{slash}").replace("//", "/"), &alice.token)
                .await;
            assert_eq!(status, StatusCode::OK, "{path}: {info}");
            assert_eq!(
                (&info["address"], &info["registrationId"]),
                (&json!("alice.1"), &json!(11)),
                "{path}"
            );
            assert_eq!(info["preKeyCount"], 2, "{path}: the primary's count");
        }
    }
}

#[tokio::test]
async fn v2_paths_answer_405_to_other_methods_and_404_to_ids_that_are_not_numbers() {
    let s = TestServer::start().await;
    let [alice, _second] = alice_with_two(&s, 0, 0).await;
    let wrong_method = [
        ("PUT", "/v2/devices"),
        ("DELETE", "/v2/devices/"),
        ("GET", "/v2/devices/2"),
        ("POST", "/v2/devices/2/"),
        ("GET", "/v2/messages/11"),
        ("DELETE", "/v2/messages/11/"),
        ("POST", "/v2/prekeybundle/alice/11"),
        ("DELETE", "/v2/prekeybundle/alice/11/"),
    ];
    let unknown = [
        ("DELETE", "/v2/devices/x"),
        ("GET", "/v2/devices/2/3"),
        ("POST", "/v2/messages/x"),
        ("GET", "/v2/prekeybundle/alice/x"),
        ("GET", "/v2/prekeybundle/alice"),
        ("GET", "/v2"),
    ];
    for token in [None, Some(alice.token.as_str())] {
        for (method, path) in wrong_method {
            let answer = s.call(method, path, token, None).await;
            let what = format!("{method} {path}, token {}", token.is_some());
            assert_error(
                &answer,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                what,
            );
        }
        for (method, path) in unknown {
            let answer = s.call(method, path, token, None).await;
            let what = format!("{method} {path}, token {}", token.is_some());
            assert_error(&answer, StatusCode::NOT_FOUND, "not_found", what);
        }
    }
    assert_eq!(listed_ids(&s, &alice).await, [1, 2]);
}

#[tokio::test]
async fn v2_paths_answer_the_same_with_a_trailing_slash() {
    let s = TestServer::start().await;
    let [_alice, second] = alice_with_two(&s, 2, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    for path in ["/v2/prekeybundle/alice/22", "/v2/prekeybundle/alice/22/"] {
        let (status, bundle) = s.get(path, &bob.token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {bundle}");
        assert_eq!(
            bundle["devices"].as_array().map(Vec::len),
            Some(2),
            "{path}"
        );
    }
    for path in ["/v2/messages/22", "/v2/messages/22/"] {
        let body = json!({"recipient": "alice", "messages": [to(1, 11, "a"), to(2, 12, "b")]});
        let (status, sent) = s.post(path, &bob.token, body).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {sent}");
    }
    assert_eq!(queue(&s, &second).await.len(), 2);
}
