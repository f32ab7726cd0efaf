//! `POST /signedprekey/<regId>`: replacing the signed prekey, and keeping it on a bad one.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use signal_server::crypto::{b64, KeyPair};

#[tokio::test]
async fn signed_prekey_upload_replaces_the_signed_prekey() {
    let s = TestServer::start().await;
    let u = s.user_with_device("resigner", 241, 5, 0).await;
    let peer = s.user_with_device("resignerpeer", 242, 0, 0).await;
    for (i, slash) in SLASHES.iter().enumerate() {
        let key_id = 7 + i as u64;
        let key = signed_ec(&u.identity, key_id as u32);
        let (status, res) = s
            .post(&format!("/signedprekey/241{slash}"), &u.token, key.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{res}");
        assert_eq!(res["code"], "signed_prekey_stored", "{res}");
        assert!(res["message"].is_string(), "{res}");
        let info = device_info(&s, &u).await;
        assert_eq!(info["signedPreKeyId"], key_id, "{info}");
        assert_eq!(info["preKeyCount"], 5 - i as u64, "{info}");
        let b = bundle_ok(&s, &peer, "resigner", slash).await;
        assert_eq!(b["signedPreKey"], key, "{b}");
    }
}

#[tokio::test]
async fn signed_prekey_upload_with_a_bad_key_or_signature_is_refused_and_keeps_the_old_key() {
    let s = TestServer::start().await;
    let u = s.user_with_device("badsigner", 251, 0, 0).await;
    let peer = s.user_with_device("badsignerpeer", 252, 0, 0).await;
    let before = bundle_ok(&s, &peer, "badsigner", "").await["signedPreKey"].clone();
    let id = &u.identity;
    let good = signed_ec(id, 9);
    let mut tampered = good.clone();
    tampered["signature"] = flip(&good["signature"], 2, 0x01);
    let mut sign_bit = good.clone();
    sign_bit["signature"] = flip(&good["signature"], 63, 0x80);
    let mut swapped = good.clone();
    swapped["publicKey"] = json!(b64::encode(&KeyPair::generate().public));
    let mut short_sig = good.clone();
    short_sig["signature"] = json!(b64::encode(&b64d(&good["signature"])[..63]));
    let mut kyber = signed_kyber(id, 9);
    kyber["keyId"] = json!(9);
    let mut no_sig = good.clone();
    no_sig.as_object_mut().unwrap().remove("signature");
    let mut big_id = signed_ec(id, 1);
    big_id["keyId"] = json!(16_777_216);
    let cases = [
        (
            "signed by another key",
            signed_ec(&KeyPair::generate(), 9),
            "signature",
        ),
        ("tampered", tampered, "signature"),
        ("sign bit flipped", sign_bit, "signature"),
        ("publicKey swapped", swapped, "signature"),
        ("63-byte signature", short_sig, "signature"),
        ("missing signature", no_sig, "signature"),
        ("Kyber key", kyber, "publicKey"),
        (
            "32-byte key",
            signed_over(id, 9, &KeyPair::generate().public[1..]),
            "publicKey",
        ),
        ("keyId out of range", big_id, "keyId"),
    ];
    for (i, (what, body, field)) in cases.into_iter().enumerate() {
        let path = format!("/signedprekey/251{}", SLASHES[i % 2]);
        let (status, res) = s.post(&path, &u.token, body).await;
        assert_invalid_in(&(status, &res), field, None, what);
        assert_eq!(device_info(&s, &u).await["signedPreKeyId"], 1, "{what}");
    }
    for body in [json!([]), json!({}), json!([signed_ec(id, 9)]), json!("x")] {
        let (status, res) = s.post("/signedprekey/251", &u.token, body.clone()).await;
        assert_error(
            &(status, &res),
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            format!("signed body {body}"),
        );
    }
    let after = bundle_ok(&s, &peer, "badsigner", "").await["signedPreKey"].clone();
    assert_eq!(after, before);
}
