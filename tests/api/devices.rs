//! `/device/`: creating the caller's one device (who may, with which address, all or nothing,
//! within the key caps), showing it and deleting it with its keys, as docs/API.md's "Devices"
//! describes them, with and without a trailing slash.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};

#[tokio::test]
async fn device_create_answers_201_device_created_on_any_device_path() {
    let s = TestServer::start().await;
    let paths = ["/device/4001", "/device/4002/", "/device/", "/device"];
    for (i, path) in paths.iter().enumerate() {
        let u = user_for(&s, &format!("creator{i}"), 4001 + i as u32).await;
        let (status, body) = create(&s, &u, path, &u.device_body(1, 2, 1, true)).await;
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {body}");
        assert_eq!(
            body,
            json!({"code": "device_created", "message": "Device successfully created"}),
            "POST {path}"
        );
        let info = device_info(&s, &u).await;
        assert_eq!(info["registrationId"], 4001 + i as u64, "POST {path}");
    }
}

#[tokio::test]
async fn device_create_ignores_the_reg_id_in_the_path() {
    let s = TestServer::start().await;
    let u = user_for(&s, "pathless", 77).await;
    // The path says 12345, the body says 77: the body wins, the path is ignored.
    let (status, body) = create(&s, &u, "/device/12345/", &u.device_body(1, 0, 0, false)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(device_info(&s, &u).await["registrationId"], 77);
}

#[tokio::test]
async fn second_device_create_is_403_device_exists_and_keeps_the_first() {
    let s = TestServer::start().await;
    let mut u = s.user_with_device("twice", 11, 3, 2).await;
    let before = device_info(&s, &u).await;
    for slash in SLASHES {
        u.reg_id = 12;
        let body = u.device_body(1, 5, 5, true);
        let (status, res) = create(&s, &u, &format!("/device/12{slash}"), &body).await;
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "device_exists",
            format!("second create, slash {slash:?}"),
        );
    }
    u.reg_id = 11;
    assert_eq!(device_info(&s, &u).await, before);
    assert_eq!(counts(&s, &u).await, (3, 2));
}

#[tokio::test]
async fn device_address_must_be_own_username_case_insensitively_with_device_id_1_to_127() {
    let s = TestServer::start().await;
    let _other = s.user("mallory").await;
    let u = user_for(&s, "Carol", 21).await;
    let refused = [
        json!("mallory.1"),
        json!("carolx.1"),
        json!("caro.1"),
        json!("carol.0"),
        json!("carol.128"),
        json!("carol.1000"),
        json!("carol.-1"),
        json!("carol"),
        json!("carol."),
        json!(".1"),
        json!("carol.abc"),
        json!("carol.1.2"),
        json!("mallory.carol.1"),
        json!(""),
        json!(5),
        json!(null),
    ];
    for (i, address) in refused.iter().enumerate() {
        let mut body = u.device_body(1, 1, 1, true);
        body["address"] = address.clone();
        let slash = SLASHES[i % 2];
        assert_create_refused(
            &s,
            &u,
            &format!("/device/21{slash}"),
            &body,
            ("address", None),
            format!("address {address}"),
        )
        .await;
    }
    // Missing altogether.
    let mut body = u.device_body(1, 1, 1, true);
    body.as_object_mut().unwrap().remove("address");
    assert_create_refused(&s, &u, "/device/21", &body, ("address", None), "no address").await;

    // The name part matches case-insensitively; device ids 1 and 127 are the bounds.
    let mut body = u.device_body(127, 1, 1, true);
    body["address"] = json!("cAROL.127");
    let (status, res) = create(&s, &u, "/device/21", &body).await;
    assert_eq!(status, StatusCode::CREATED, "cAROL.127: {res}");
    let info = device_info(&s, &u).await;
    let address = info["address"].as_str().unwrap();
    assert!(address.eq_ignore_ascii_case("carol.127"), "{info}");

    let u2 = user_for(&s, "dave", 22).await;
    let mut body = u2.device_body(1, 0, 0, false);
    body["address"] = json!("DAVE.1");
    let (status, res) = create(&s, &u2, "/device/", &body).await;
    assert_eq!(status, StatusCode::CREATED, "DAVE.1: {res}");
}

#[tokio::test]
async fn device_create_refuses_duplicate_key_ids_in_the_request() {
    let s = TestServer::start().await;
    let u = user_for(&s, "dupes", 51).await;
    for slash in SLASHES {
        let mut body = u.device_body(1, 0, 0, true);
        body["preKeys"] = ec_prekeys([1, 2, 3, 2]);
        assert_create_refused(
            &s,
            &u,
            &format!("/device/51{slash}"),
            &body,
            ("preKeys", None),
            "duplicate EC keyId",
        )
        .await;

        let mut body = u.device_body(1, 2, 0, true);
        body["kyberPreKeys"] = kyber_prekeys(&u.identity, [7, 8, 7]);
        assert_create_refused(
            &s,
            &u,
            &format!("/device/51{slash}"),
            &body,
            ("kyberPreKeys", None),
            "duplicate Kyber keyId",
        )
        .await;
    }
    let (status, res) = create(&s, &u, "/device/51", &u.device_body(1, 3, 3, true)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
}

#[tokio::test]
async fn device_create_over_the_default_cap_is_invalid_data_and_stores_nothing() {
    let s = TestServer::start().await;
    let u = user_for(&s, "greedy", 61).await;
    let mut body = u.device_body(1, 0, 0, true);
    body["preKeys"] = ec_prekeys(1..=101);
    assert_create_refused(
        &s,
        &u,
        "/device/61",
        &body,
        ("preKeys", None),
        "101 EC prekeys",
    )
    .await;

    let mut body = u.device_body(1, 0, 0, true);
    body["kyberPreKeys"] = kyber_prekeys(&u.identity, 1..=101);
    assert_create_refused(
        &s,
        &u,
        "/device/61/",
        &body,
        ("kyberPreKeys", None),
        "101 Kyber prekeys",
    )
    .await;

    // Exactly 100 of each fits (and fits the default body limit).
    let (status, res) = create(&s, &u, "/device/61", &u.device_body(1, 100, 100, true)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(counts(&s, &u).await, (100, 100));
}

#[tokio::test]
async fn device_create_over_max_prekeys_is_invalid_data_and_stores_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "10"]).await;
    let u = user_for(&s, "capped", 62).await;
    for slash in SLASHES {
        assert_create_refused(
            &s,
            &u,
            &format!("/device/62{slash}"),
            &u.device_body(1, 11, 0, true),
            ("preKeys", None),
            "11 EC prekeys, cap 10",
        )
        .await;
        assert_create_refused(
            &s,
            &u,
            &format!("/device/62{slash}"),
            &u.device_body(1, 0, 11, true),
            ("kyberPreKeys", None),
            "11 Kyber prekeys, cap 10",
        )
        .await;
    }
    let (status, res) = create(&s, &u, "/device/62", &u.device_body(1, 10, 10, true)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let info = device_info(&s, &u).await;
    assert_eq!(info["preKeyCount"], 10);
    assert_eq!(info["kyberPreKeyCount"], 10);
    assert_eq!(info["hasLastResortKyberPreKey"], true);
}

#[tokio::test]
async fn device_create_is_all_or_nothing() {
    let s = TestServer::start().await;
    let u = user_for(&s, "atomic", 71).await;
    let peer = s.user_with_device("atomicpeer", 72, 0, 0).await;
    // Everything valid except the last item: nothing at all may be stored.
    let mut body = u.device_body(1, 50, 20, true);
    body["lastResortKyberPreKey"] = signed_kyber(&KeyPair::generate(), 1);
    assert_create_refused(
        &s,
        &u,
        "/device/71",
        &body,
        ("lastResortKyberPreKey", None),
        "bad last resort",
    )
    .await;
    let (status, res) = s.get("/prekeys/71", &u.token).await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "no_device",
        "GET /prekeys",
    );
    let (status, res) = bundle(&s, &peer, "atomic", "").await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "no_device",
        "bundle after refused create",
    );

    // A correct create now works, and holds exactly its own keys (none left over).
    let mut body = u.device_body(1, 0, 0, false);
    body["preKeys"] = ec_prekeys([500]);
    let (status, res) = create(&s, &u, "/device/71/", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let info = device_info(&s, &u).await;
    assert_eq!(info["preKeyCount"], 1);
    assert_eq!(info["kyberPreKeyCount"], 0);
    assert_eq!(info["hasLastResortKyberPreKey"], false);
    let b = bundle_ok(&s, &peer, "atomic", "").await;
    assert_eq!(b["preKey"]["keyId"], 500);
    assert!(b.get("kyberPreKey").is_none(), "{b}");
    let b = bundle_ok(&s, &peer, "atomic", "").await;
    assert!(b.get("preKey").is_none(), "{b}");
}

#[tokio::test]
async fn get_device_reports_its_shape_and_counts_whatever_follows_device() {
    let s = TestServer::start().await;
    let u = s.user_with_device("shower", 81, 4, 3).await;
    let want = json!({
        "address": "shower.1",
        "registrationId": 81,
        "identityKey": b64::encode(&u.identity.public),
        "signedPreKeyId": 1,
        "preKeyCount": 4,
        "kyberPreKeyCount": 3,
        "hasLastResortKyberPreKey": true,
    });
    for path in [
        "/device/",
        "/device",
        "/device/81",
        "/device/81/",
        "/device/999",
        "/device/anything/else",
    ] {
        let (status, body) = s.get(path, &u.token).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        assert_eq!(body, want, "GET {path}");
    }
}

#[tokio::test]
async fn get_device_without_a_device_is_400_no_device() {
    let s = TestServer::start().await;
    let u = s.user("deviceless").await;
    for path in ["/device/", "/device", "/device/5", "/device/5/"] {
        let (status, body) = s.get(path, &u.token).await;
        assert_error(&(status, &body), StatusCode::BAD_REQUEST, "no_device", path);
    }
}

#[tokio::test]
async fn delete_device_with_or_without_an_id_is_204_and_removes_its_keys() {
    let s = TestServer::start().await;
    let peer = s.user_with_device("deletepeer", 90, 0, 0).await;
    for (i, path) in ["/device/", "/device", "/device/91", "/device/92/"]
        .iter()
        .enumerate()
    {
        let name = format!("deleter{i}");
        let reg_id = 91 + i as u32;
        let mut u = s.user_with_device(&name, reg_id, 5, 5).await;
        let (status, body) = s.call("DELETE", path, Some(&u.token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "DELETE {path}: {body}");
        assert_eq!(body, Value::Null, "DELETE {path}: 204 with a body");
        assert_no_device(&s, &u, &format!("after DELETE {path}")).await;
        let (status, body) = s.get(&format!("/prekeys/{reg_id}"), &u.token).await;
        assert_error(
            &(status, &body),
            StatusCode::BAD_REQUEST,
            "no_device",
            "stock",
        );
        let (status, body) = bundle(&s, &peer, &name, SLASHES[i % 2]).await;
        assert_error(
            &(status, &body),
            StatusCode::BAD_REQUEST,
            "no_device",
            format!("bundle after DELETE {path}"),
        );
        assert_eq!(
            body["message"], "Recipient has not yet registered a device",
            "{body}"
        );

        // A new device starts empty: none of the old one-time or last-resort keys survive.
        u.reg_id = reg_id + 100;
        let (status, res) = create(&s, &u, "/device/", &u.device_body(1, 0, 0, false)).await;
        assert_eq!(status, StatusCode::CREATED, "re-create: {res}");
        assert_eq!(counts(&s, &u).await, (0, 0));
        let b = bundle_ok(&s, &peer, &name, "").await;
        assert!(b.get("preKey").is_none(), "old prekey survived: {b}");
        assert!(
            b.get("kyberPreKey").is_none(),
            "old Kyber key survived: {b}"
        );
        assert_eq!(b["registrationId"], reg_id + 100);
    }
}

#[tokio::test]
async fn device_routes_without_a_token_are_401() {
    let s = TestServer::start().await;
    let u = user_for(&s, "tokenless", 95).await;
    for method in ["POST", "GET", "DELETE"] {
        for path in ["/device/", "/device", "/device/95"] {
            let body = u.device_body(1, 1, 1, true).to_string().into_bytes();
            let body = (method == "POST").then_some(body);
            let answer = s.send(method, path, None, body).await;
            assert_401(&answer, format!("{method} {path}"));
        }
    }
    assert_no_device(&s, &u, "after unauthenticated create").await;
}
