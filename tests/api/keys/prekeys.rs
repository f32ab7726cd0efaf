//! `POST` and `GET /prekeys/<regId>`: one-time EC prekey uploads (shapes, the 100-item and
//! per-device caps, all or nothing) and the stock count.

use super::{km, ItemMutation};
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use signal_server::crypto::{b64, KeyPair};

#[tokio::test]
async fn prekey_upload_accepts_a_bare_array_or_a_prekeys_object() {
    let s = TestServer::start().await;
    let u = s.user_with_device("uploader", 101, 0, 0).await;
    let mut next = 1u32;
    let mut expected = 0u64;
    for slash in SLASHES {
        let path = format!("/prekeys/101{slash}");
        let (status, body) = s.post(&path, &u.token, ec_prekeys(next..next + 3)).await;
        assert_eq!(status, StatusCode::OK, "bare array {path}: {body}");
        assert_eq!(body["code"], "prekeys_stored", "{body}");
        assert!(body["message"].is_string(), "{body}");
        next += 3;
        expected += 3;
        assert_eq!(counts(&s, &u).await, (expected, 0));

        let (status, body) = s
            .post(
                &path,
                &u.token,
                json!({"preKeys": ec_prekeys(next..next + 4)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "object {path}: {body}");
        assert_eq!(body["code"], "prekeys_stored", "{body}");
        next += 4;
        expected += 4;
        assert_eq!(counts(&s, &u).await, (expected, 0));
    }
    // One item and exactly 100 items are both fine.
    let (status, body) = s.post("/prekeys/101", &u.token, ec_prekeys([1000])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let u2 = s.user_with_device("uploader2", 102, 0, 0).await;
    let (status, body) = s
        .post("/prekeys/102/", &u2.token, ec_prekeys(1..=100))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(counts(&s, &u2).await, (100, 0));
}

#[tokio::test]
async fn prekey_upload_replaces_a_stored_key_id_without_counting_it_twice() {
    let s = TestServer::start().await;
    let u = s.user_with_device("replacer", 111, 5, 0).await;
    let peer = s.user_with_device("replacerpeer", 112, 0, 0).await;
    for slash in SLASHES {
        let keys = ec_prekeys(1..=5);
        let (status, body) = s
            .post(&format!("/prekeys/111{slash}"), &u.token, keys.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(counts(&s, &u).await, (5, 0), "replaced ids counted twice");
        if slash == "/" {
            // The new key for id 1 is the one handed out.
            let b = bundle_ok(&s, &peer, "replacer", "").await;
            assert_eq!(b["preKey"], keys[0], "{b}");
        }
    }
    // A mix of replaced and new ids counts only the new ones.
    let (status, body) = s.post("/prekeys/111", &u.token, ec_prekeys(3..=8)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(counts(&s, &u).await, (7, 0));
}

#[tokio::test]
async fn prekey_upload_with_an_empty_or_non_list_body_is_403_incorrect_arguments() {
    let s = TestServer::start().await;
    let u = s.user_with_device("shapeless", 121, 2, 0).await;
    for (i, body) in [
        json!([]),
        json!({}),
        json!("keys"),
        json!(42),
        json!(true),
        json!(null),
        json!({"keyId": 1, "publicKey": b64::encode(&KeyPair::generate().public)}),
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/prekeys/121{}", SLASHES[i % 2]);
        let (status, res) = s.post(&path, &u.token, body.clone()).await;
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            format!("body {body}"),
        );
    }
    // {"preKeys": <empty or not a list>}: refused either way, nothing stored.
    for body in [json!({"preKeys": []}), json!({"preKeys": "x"})] {
        let (status, res) = s.post("/prekeys/121", &u.token, body.clone()).await;
        assert!(
            (status == StatusCode::FORBIDDEN && res["code"] == "incorrect_arguments")
                || (status == StatusCode::BAD_REQUEST && res["code"] == "invalid_data"),
            "body {body}: {status} {res}"
        );
    }
    // Not JSON at all.
    let (status, res) = s
        .call_raw("POST", "/prekeys/121", Some(&u.token), b"[{".to_vec())
        .await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "malformed_json",
        "not JSON",
    );
    assert_eq!(counts(&s, &u).await, (2, 0));
}

#[tokio::test]
async fn prekey_upload_of_more_than_100_items_is_invalid_data_and_stores_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "1000"]).await;
    let u = s.user_with_device("bulk", 131, 0, 0).await;
    for slash in SLASHES {
        let (status, res) = s
            .post(
                &format!("/prekeys/131{slash}"),
                &u.token,
                ec_prekeys(1..=101),
            )
            .await;
        assert_invalid_in(&(status, &res), "preKeys", None, "101 items, bare");
        let (status, res) = s
            .post(
                &format!("/prekeys/131{slash}"),
                &u.token,
                json!({"preKeys": ec_prekeys(1..=101)}),
            )
            .await;
        assert_invalid_in(&(status, &res), "preKeys", None, "101 items, object");
    }
    assert_eq!(counts(&s, &u).await, (0, 0));
}

#[tokio::test]
async fn prekey_upload_with_a_bad_item_is_invalid_data_naming_the_field_and_stores_nothing() {
    let s = TestServer::start().await;
    let u = s.user_with_device("baditems", 141, 1, 0).await;
    let cases: Vec<(&str, ItemMutation, Option<&str>)> = vec![
        (
            "publicKey 32 bytes",
            km(|k| k[2]["publicKey"] = json!(key_with(32, 0x05))),
            Some("publicKey"),
        ),
        (
            "publicKey type byte 0x08",
            km(|k| k[2]["publicKey"] = json!(key_with(33, 0x08))),
            Some("publicKey"),
        ),
        (
            "publicKey not base64",
            km(|k| k[2]["publicKey"] = json!("not base64!")),
            Some("publicKey"),
        ),
        (
            "publicKey missing",
            km(|k| {
                k[2].as_object_mut().unwrap().remove("publicKey");
            }),
            Some("publicKey"),
        ),
        (
            "keyId over 16777215",
            km(|k| k[2]["keyId"] = json!(16_777_216)),
            Some("keyId"),
        ),
        (
            "keyId not an integer",
            km(|k| k[2]["keyId"] = json!(1.5)),
            Some("keyId"),
        ),
        (
            "duplicate keyId",
            km(|k| k[2]["keyId"] = k[0]["keyId"].clone()),
            None,
        ),
        ("item not an object", km(|k| k[2] = json!(7)), None),
    ];
    for (i, (what, mutate, inner)) in cases.iter().enumerate() {
        let mut keys = ec_prekeys(10..=14);
        mutate(&mut keys);
        let path = format!("/prekeys/141{}", SLASHES[i % 2]);
        let (status, res) = s.post(&path, &u.token, keys).await;
        assert_invalid_in(&(status, &res), "preKeys", *inner, what);
        assert_eq!(counts(&s, &u).await, (1, 0), "{what}: partial store");
    }
}

#[tokio::test]
async fn prekey_upload_over_max_prekeys_is_reached_max_prekeys_and_stores_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "10"]).await;
    let u = s.user_with_device("brimming", 151, 8, 0).await;
    let peer = s.user_with_device("brimmingpeer", 152, 0, 0).await;
    for slash in SLASHES {
        let (status, res) = s
            .post(
                &format!("/prekeys/151{slash}"),
                &u.token,
                ec_prekeys(9..=11),
            )
            .await;
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "8 + 3 > 10",
        );
        assert_eq!(counts(&s, &u).await, (8, 0), "partial store over the cap");
    }
    // Up to the cap is fine; replacing stored ids at the cap is fine too.
    let (status, res) = s.post("/prekeys/151", &u.token, ec_prekeys(9..=10)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(counts(&s, &u).await, (10, 0));
    let (status, res) = s.post("/prekeys/151/", &u.token, ec_prekeys(1..=10)).await;
    assert_eq!(status, StatusCode::OK, "replace at the cap: {res}");
    assert_eq!(counts(&s, &u).await, (10, 0));
    let (status, res) = s.post("/prekeys/151", &u.token, ec_prekeys([11])).await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "reached_max_prekeys",
        "10 + 1 > 10",
    );
    // Nothing of the refused uploads was stored: draining gives exactly ids 1..=10.
    let mut got = Vec::new();
    for _ in 0..11 {
        let b = bundle_ok(&s, &peer, "brimming", "").await;
        if let Some(id) = b["preKey"]["keyId"].as_u64() {
            got.push(id);
        }
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    // Once keys are handed out there is room again.
    let (status, res) = s.post("/prekeys/151", &u.token, ec_prekeys(20..=29)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(counts(&s, &u).await, (10, 0));
}

#[tokio::test]
async fn a_single_prekey_upload_larger_than_max_prekeys_is_reached_max_prekeys() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "10"]).await;
    let u = s.user_with_device("oversized", 153, 0, 0).await;
    for slash in SLASHES {
        // 11 items is a valid upload (1..=100 items) but over the per-device cap of 10.
        let (status, res) = s
            .post(
                &format!("/prekeys/153{slash}"),
                &u.token,
                ec_prekeys(1..=11),
            )
            .await;
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "11 items with cap 10",
        );
        assert_eq!(counts(&s, &u).await, (0, 0));
    }
}

#[tokio::test]
async fn prekey_count_reports_ec_and_kyber_counts() {
    let s = TestServer::start().await;
    let u = s.user_with_device("counter", 191, 7, 4).await;
    let peer = s.user_with_device("counterpeer", 192, 0, 0).await;
    for slash in SLASHES {
        let (status, body) = s.get(&format!("/prekeys/191{slash}"), &u.token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"preKeyCount": 7, "kyberPreKeyCount": 4}));
    }
    bundle_ok(&s, &peer, "counter", "").await;
    assert_eq!(counts(&s, &u).await, (6, 3));
    // The last-resort key is never counted.
    for _ in 0..5 {
        bundle_ok(&s, &peer, "counter", "/").await;
    }
    assert_eq!(counts(&s, &u).await, (1, 0));
    let info = device_info(&s, &u).await;
    assert_eq!(info["preKeyCount"], 1);
    assert_eq!(info["kyberPreKeyCount"], 0);
    assert_eq!(info["hasLastResortKyberPreKey"], true);
}
