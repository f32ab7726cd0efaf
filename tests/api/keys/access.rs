//! Who may call the key routes: only the owner of the device, by its own regId, with a token;
//! nobody reads or changes another user's device.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use signal_server::crypto::{b64, KeyPair};

#[tokio::test]
async fn key_routes_with_a_wrong_reg_id_are_403_device_changed() {
    let s = TestServer::start().await;
    let u = s.user_with_device("changed", 161, 3, 2).await;
    let target = s.user_with_device("changedtarget", 162, 3, 2).await;
    for slash in SLASHES {
        for reg in ["160", "0", "999999", "1610"] {
            let cases = [
                (
                    "POST",
                    format!("/prekeys/{reg}{slash}"),
                    Some(ec_prekeys([50])),
                ),
                // The regId check comes before the body: a bad body still gets 403.
                (
                    "POST",
                    format!("/prekeys/{reg}{slash}"),
                    Some(json!("junk")),
                ),
                ("GET", format!("/prekeys/{reg}{slash}"), None),
                (
                    "POST",
                    format!("/kyberprekeys/{reg}{slash}"),
                    Some(json!({"kyberPreKeys": kyber_prekeys(&u.identity, [50])})),
                ),
                (
                    "POST",
                    format!("/kyberprekeys/{reg}{slash}"),
                    Some(json!([])),
                ),
                (
                    "POST",
                    format!("/signedprekey/{reg}{slash}"),
                    Some(signed_ec(&u.identity, 50)),
                ),
                (
                    "POST",
                    format!("/signedprekey/{reg}{slash}"),
                    Some(json!({})),
                ),
                (
                    "GET",
                    format!("/prekeybundle/changedtarget/{reg}{slash}"),
                    None,
                ),
                ("GET", format!("/prekeybundle/nobody/{reg}{slash}"), None),
            ];
            for (method, path, body) in cases {
                let (status, res) = s.call(method, &path, Some(&u.token), body.as_ref()).await;
                assert_error(
                    &(status, &res),
                    StatusCode::FORBIDDEN,
                    "device_changed",
                    format!("{method} {path}"),
                );
            }
        }
    }
    assert_eq!(counts(&s, &u).await, (3, 2));
    assert_eq!(device_info(&s, &u).await["signedPreKeyId"], 1);
    assert_eq!(
        counts(&s, &target).await,
        (3, 2),
        "a refused bundle took a key"
    );
}

#[tokio::test]
async fn key_routes_without_a_device_are_400_no_device() {
    let s = TestServer::start().await;
    let u = s.user("nodevice").await;
    let _target = s.user_with_device("nodevicetarget", 172, 3, 0).await;
    let id = KeyPair::generate();
    for slash in SLASHES {
        let cases = [
            (
                "POST",
                format!("/prekeys/171{slash}"),
                Some(ec_prekeys([1])),
            ),
            ("POST", format!("/prekeys/171{slash}"), Some(json!([]))),
            ("GET", format!("/prekeys/171{slash}"), None),
            (
                "POST",
                format!("/kyberprekeys/171{slash}"),
                Some(json!({"kyberPreKeys": kyber_prekeys(&id, [1])})),
            ),
            (
                "POST",
                format!("/signedprekey/171{slash}"),
                Some(signed_ec(&id, 2)),
            ),
            (
                "GET",
                format!("/prekeybundle/nodevicetarget/171{slash}"),
                None,
            ),
            // The caller's device is checked before the recipient exists.
            ("GET", format!("/prekeybundle/nobody/171{slash}"), None),
        ];
        for (method, path, body) in cases {
            let (status, res) = s.call(method, &path, Some(&u.token), body.as_ref()).await;
            assert_error(
                &(status, &res),
                StatusCode::BAD_REQUEST,
                "no_device",
                format!("{method} {path}"),
            );
        }
    }
    assert_no_device(&s, &u, "after key uploads without a device").await;
}

#[tokio::test]
async fn key_routes_without_a_token_are_401() {
    let s = TestServer::start().await;
    let u = s.user_with_device("keyowner", 181, 2, 2).await;
    for slash in SLASHES {
        let cases = [
            (
                "POST",
                format!("/prekeys/181{slash}"),
                Some(ec_prekeys([9])),
            ),
            ("GET", format!("/prekeys/181{slash}"), None),
            (
                "POST",
                format!("/kyberprekeys/181{slash}"),
                Some(json!({"kyberPreKeys": kyber_prekeys(&u.identity, [9])})),
            ),
            (
                "POST",
                format!("/signedprekey/181{slash}"),
                Some(signed_ec(&u.identity, 9)),
            ),
            ("GET", format!("/prekeybundle/keyowner/181{slash}"), None),
        ];
        for (method, path, body) in cases {
            for token in [None, Some("not-a-jwt")] {
                let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
                let answer = s.send(method, &path, token.and_then(bearer), bytes).await;
                assert_401(&answer, format!("{method} {path} token {token:?}"));
            }
        }
    }
    assert_eq!(counts(&s, &u).await, (2, 2));
    assert_eq!(device_info(&s, &u).await["signedPreKeyId"], 1);
}

#[tokio::test]
async fn another_user_cannot_change_delete_or_read_a_device_they_do_not_own() {
    let s = TestServer::start().await;
    let victim = s.user_with_device("victim", 321, 5, 3).await;
    let attacker = s.user_with_device("attacker", 322, 1, 1).await;
    // Same registrationId as the victim: every regId route acts on the attacker's own device.
    let twin = s.user_with_device("twin", 321, 0, 0).await;
    let loner = s.user("loner").await;
    let before = device_info(&s, &victim).await;
    let before_bundle_signed = {
        let peer = s.user_with_device("isopeer", 323, 0, 0).await;
        let b = bundle_ok(&s, &peer, "victim", "").await;
        s.call("DELETE", "/device/", Some(&peer.token), None).await;
        b["signedPreKey"].clone()
    };
    // That fetch took EC key 1 and Kyber key 1.
    let before_counts = (4, 2);
    assert_eq!(counts(&s, &victim).await, before_counts);

    let key = KeyPair::generate();
    for slash in SLASHES {
        let attempts = |id: &KeyPair| {
            vec![
                (
                    "POST",
                    format!("/prekeys/321{slash}"),
                    Some(ec_prekeys(50..=60)),
                ),
                ("GET", format!("/prekeys/321{slash}"), None),
                (
                    "POST",
                    format!("/kyberprekeys/321{slash}"),
                    Some(json!({"kyberPreKeys": kyber_prekeys(id, [50]),
                                "lastResortKyberPreKey": signed_kyber(id, 51)})),
                ),
                (
                    "POST",
                    format!("/signedprekey/321{slash}"),
                    Some(signed_ec(id, 52)),
                ),
            ]
        };
        for (method, path, body) in attempts(&attacker.identity) {
            let (status, res) = s
                .call(method, &path, Some(&attacker.token), body.as_ref())
                .await;
            assert_error(
                &(status, &res),
                StatusCode::FORBIDDEN,
                "device_changed",
                format!("attacker {method} {path}"),
            );
        }
        for (method, path, body) in attempts(&key) {
            let (status, res) = s
                .call(method, &path, Some(&loner.token), body.as_ref())
                .await;
            assert_error(
                &(status, &res),
                StatusCode::BAD_REQUEST,
                "no_device",
                format!("loner {method} {path}"),
            );
        }
        // The twin's uploads are valid for the twin's own device and land only there.
        for (method, path, body) in attempts(&twin.identity) {
            let (status, res) = s
                .call(method, &path, Some(&twin.token), body.as_ref())
                .await;
            assert_eq!(status, StatusCode::OK, "twin {method} {path}: {res}");
        }
    }
    assert_eq!(counts(&s, &twin).await, (11, 1));
    assert_eq!(device_info(&s, &twin).await["signedPreKeyId"], 52);

    // DELETE /device/<victim's id> deletes only the caller's own device.
    let (status, _) = s
        .call("DELETE", "/device/321", Some(&attacker.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_no_device(&s, &attacker, "attacker after DELETE /device/321").await;
    let (status, res) = s
        .call("DELETE", "/device/321/", Some(&loner.token), None)
        .await;
    assert!(
        status == StatusCode::NO_CONTENT
            || (status == StatusCode::BAD_REQUEST && res["code"] == "no_device"),
        "loner DELETE: {status} {res}"
    );

    // The victim's device is exactly as before.
    let after = device_info(&s, &victim).await;
    let mut expected = before.clone();
    expected["preKeyCount"] = json!(before_counts.0);
    expected["kyberPreKeyCount"] = json!(before_counts.1);
    assert_eq!(after, expected);
    assert_eq!(counts(&s, &victim).await, before_counts);
    let peer = s.user_with_device("isopeer2", 324, 0, 0).await;
    let b = bundle_ok(&s, &peer, "victim", "").await;
    assert_eq!(b["signedPreKey"], before_bundle_signed);
    assert_eq!(b["preKey"]["keyId"], 2, "{b}");
    assert_eq!(b["kyberPreKey"]["keyId"], 2, "{b}");
    assert_eq!(b["identityKey"], b64::encode(&victim.identity.public));
}
