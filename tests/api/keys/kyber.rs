//! `POST /kyberprekeys/<regId>`: one-time Kyber prekeys and the last-resort key, and their cap.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn kyber_upload_accepts_one_time_keys_and_or_a_last_resort_key() {
    let s = TestServer::start().await;
    let u = s.user_with_device("kyberer", 201, 0, 0).await;
    // user_with_device gives a last-resort key; start from a device without one.
    let u2 = user_for(&s, "kyberer2", 202).await;
    let (status, res) = create(&s, &u2, "/device/", &u2.device_body(1, 0, 0, false)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(
        device_info(&s, &u2).await["hasLastResortKyberPreKey"],
        false
    );
    let peer = s.user_with_device("kybererpeer", 203, 0, 0).await;

    let (status, res) = upload_kyber(&s, &u2, "/kyberprekeys/202", 1..=3).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["code"], "kyber_prekeys_stored", "{res}");
    assert!(res["message"].is_string(), "{res}");
    assert_eq!(counts(&s, &u2).await, (0, 3));
    assert_eq!(
        device_info(&s, &u2).await["hasLastResortKyberPreKey"],
        false
    );

    let last_resort = signed_kyber(&u2.identity, 4242);
    let (status, res) = s
        .post(
            "/kyberprekeys/202/",
            &u2.token,
            json!({"lastResortKyberPreKey": last_resort}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["code"], "kyber_prekeys_stored", "{res}");
    assert_eq!(counts(&s, &u2).await, (0, 3), "last resort counted");
    assert_eq!(device_info(&s, &u2).await["hasLastResortKyberPreKey"], true);

    let last_resort2 = signed_kyber(&u2.identity, 4343);
    let (status, res) = s
        .post(
            "/kyberprekeys/202",
            &u2.token,
            json!({"kyberPreKeys": kyber_prekeys(&u2.identity, 4..=5), "lastResortKyberPreKey": last_resort2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(counts(&s, &u2).await, (0, 5));

    // The newest last-resort key is the one handed out once the one-time keys are gone.
    for expected in 1..=5 {
        let b = bundle_ok(&s, &peer, "kyberer2", "").await;
        assert_eq!(b["kyberPreKey"]["keyId"], expected, "{b}");
    }
    for _ in 0..2 {
        let b = bundle_ok(&s, &peer, "kyberer2", "").await;
        assert_eq!(b["kyberPreKey"], last_resort2, "{b}");
    }

    // Replacing a stored Kyber keyId does not count twice.
    let (status, res) = upload_kyber(&s, &u, "/kyberprekeys/201", 1..=2).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, res) = upload_kyber(&s, &u, "/kyberprekeys/201", 1..=2).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(counts(&s, &u).await, (0, 2));
}

#[tokio::test]
async fn kyber_upload_with_a_wrong_shape_is_refused() {
    let s = TestServer::start().await;
    let u = s.user_with_device("kybershape", 211, 0, 2).await;
    for (i, body) in [
        json!({}),
        json!([]),
        json!("x"),
        json!(kyber_prekeys(&u.identity, [7])),
    ]
    .iter()
    .enumerate()
    {
        let (status, res) = s
            .post(
                &format!("/kyberprekeys/211{}", SLASHES[i % 2]),
                &u.token,
                body.clone(),
            )
            .await;
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            format!("kyber body #{i}"),
        );
    }
    // An object with neither field: at least one is required.
    let (status, res) = s
        .post("/kyberprekeys/211", &u.token, json!({"foo": 1}))
        .await;
    assert_error(
        &(status, &res),
        StatusCode::BAD_REQUEST,
        "invalid_data",
        "neither field",
    );
    for body in [json!({"kyberPreKeys": []}), json!({"kyberPreKeys": "x"})] {
        let (status, res) = s.post("/kyberprekeys/211/", &u.token, body.clone()).await;
        assert!(
            (status == StatusCode::FORBIDDEN && res["code"] == "incorrect_arguments")
                || (status == StatusCode::BAD_REQUEST && res["code"] == "invalid_data"),
            "body {body}: {status} {res}"
        );
    }
    // More than 100 items.
    let (status, res) = upload_kyber(&s, &u, "/kyberprekeys/211", 1..=101).await;
    assert_invalid_in(&(status, &res), "kyberPreKeys", None, "101 Kyber keys");
    assert_eq!(counts(&s, &u).await, (0, 2));
}

#[tokio::test]
async fn kyber_cap_is_separate_from_the_ec_cap_and_ignores_the_last_resort_key() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "10"]).await;
    let full = s.user_with_device("fullkeys", 231, 10, 10).await;
    for slash in SLASHES {
        let (status, res) =
            upload_kyber(&s, &full, &format!("/kyberprekeys/231{slash}"), [11]).await;
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "Kyber 10 + 1",
        );
        // With a last-resort key in the same refused upload: nothing stored, not even that.
        let (status, res) = s
            .post(
                &format!("/kyberprekeys/231{slash}"),
                &full.token,
                json!({"kyberPreKeys": kyber_prekeys(&full.identity, [11, 12]),
                       "lastResortKyberPreKey": signed_kyber(&full.identity, 31337)}),
            )
            .await;
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "Kyber 10 + 2 with last resort",
        );
        let (status, res) = s
            .post(
                &format!("/prekeys/231{slash}"),
                &full.token,
                ec_prekeys([11]),
            )
            .await;
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "EC 10 + 1",
        );
    }
    // A last-resort key alone is never over the cap.
    let (status, res) = s
        .post(
            "/kyberprekeys/231",
            &full.token,
            json!({"lastResortKyberPreKey": signed_kyber(&full.identity, 555)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "last resort at the cap: {res}");
    assert_eq!(counts(&s, &full).await, (10, 10));

    // A full EC stock does not block Kyber uploads, and the reverse.
    let ec_full = s.user_with_device("ecfull", 232, 10, 0).await;
    let (status, res) = upload_kyber(&s, &ec_full, "/kyberprekeys/232", 1..=10).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(counts(&s, &ec_full).await, (10, 10));
    let ky_full = s.user_with_device("kyfull", 233, 0, 10).await;
    let (status, res) = s
        .post("/prekeys/233/", &ky_full.token, ec_prekeys(1..=10))
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(counts(&s, &ky_full).await, (10, 10));
    let info = device_info(&s, &ky_full).await;
    assert_eq!(info["kyberPreKeyCount"], 10, "last resort counted: {info}");
    assert_eq!(info["hasLastResortKyberPreKey"], true);
}

#[tokio::test]
async fn a_single_kyber_upload_larger_than_max_prekeys_is_reached_max_prekeys() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "10"]).await;
    let empty = s.user_with_device("kyempty", 234, 0, 0).await;
    for slash in SLASHES {
        // 11 items is a valid upload (1..=100 items) but over the per-device cap of 10.
        let (status, res) =
            upload_kyber(&s, &empty, &format!("/kyberprekeys/234{slash}"), 1..=11).await;
        assert_error(
            &(status, &res),
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "11 Kyber items with cap 10",
        );
        assert_eq!(counts(&s, &empty).await, (0, 0));
    }
}
