//! Which keys and signatures the server takes, as tables of one bad change each to an otherwise
//! correct device body or Kyber upload: each is refused naming the field, and stores nothing.

use super::{flip_at, m, Mutation};
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};

#[tokio::test]
async fn device_create_refuses_malformed_keys_naming_the_field() {
    let s = TestServer::start().await;
    let u = user_for(&s, "malformed", 31).await;
    let cases: Vec<(&str, Mutation, &str, Option<&str>)> = vec![
        (
            "identityKey not base64",
            m(|b, _| b["identityKey"] = json!("!!not base64!!")),
            "identityKey",
            None,
        ),
        (
            "identityKey 32 bytes",
            m(|b, id| b["identityKey"] = json!(b64::encode(&id.public[1..]))),
            "identityKey",
            None,
        ),
        (
            "identityKey 34 bytes",
            m(|b, id| {
                let mut k = id.public.to_vec();
                k.push(0);
                b["identityKey"] = json!(b64::encode(&k));
            }),
            "identityKey",
            None,
        ),
        (
            "identityKey type byte 0x06",
            m(|b, id| {
                let mut k = id.public.to_vec();
                k[0] = 0x06;
                b["identityKey"] = json!(b64::encode(&k));
            }),
            "identityKey",
            None,
        ),
        (
            "identityKey is a Kyber key",
            m(|b, _| b["identityKey"] = json!(b64::encode(&kyber_key()))),
            "identityKey",
            None,
        ),
        (
            "identityKey missing",
            m(|b, _| {
                b.as_object_mut().unwrap().remove("identityKey");
            }),
            "identityKey",
            None,
        ),
        (
            "identityKey not a string",
            m(|b, _| b["identityKey"] = json!(12)),
            "identityKey",
            None,
        ),
        (
            "registrationId over 999999",
            m(|b, _| b["registrationId"] = json!(1_000_000)),
            "registrationId",
            None,
        ),
        (
            "registrationId negative",
            m(|b, _| b["registrationId"] = json!(-1)),
            "registrationId",
            None,
        ),
        (
            "registrationId not a number",
            m(|b, _| b["registrationId"] = json!("abc")),
            "registrationId",
            None,
        ),
        (
            "registrationId missing",
            m(|b, _| {
                b.as_object_mut().unwrap().remove("registrationId");
            }),
            "registrationId",
            None,
        ),
        (
            "signedPreKey missing",
            m(|b, _| {
                b.as_object_mut().unwrap().remove("signedPreKey");
            }),
            "signedPreKey",
            None,
        ),
        (
            "signedPreKey not an object",
            m(|b, _| b["signedPreKey"] = json!("x")),
            "signedPreKey",
            None,
        ),
        (
            "signedPreKey publicKey type byte 0x08",
            m(|b, id| {
                let mut k = KeyPair::generate().public.to_vec();
                k[0] = 0x08;
                b["signedPreKey"] = signed_over(id, 1, &k);
            }),
            "signedPreKey",
            Some("publicKey"),
        ),
        (
            "signedPreKey publicKey 32 bytes",
            m(|b, id| {
                let k = KeyPair::generate().public[1..].to_vec();
                b["signedPreKey"] = signed_over(id, 1, &k);
            }),
            "signedPreKey",
            Some("publicKey"),
        ),
        (
            "signedPreKey publicKey not base64",
            m(|b, _| b["signedPreKey"]["publicKey"] = json!("***")),
            "signedPreKey",
            Some("publicKey"),
        ),
        (
            "signedPreKey signature 63 bytes",
            m(|b, _| {
                let sig = b64d(&b["signedPreKey"]["signature"]);
                b["signedPreKey"]["signature"] = json!(b64::encode(&sig[..63]));
            }),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature 65 bytes",
            m(|b, _| {
                let mut sig = b64d(&b["signedPreKey"]["signature"]);
                sig.push(0);
                b["signedPreKey"]["signature"] = json!(b64::encode(&sig));
            }),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature not base64",
            m(|b, _| b["signedPreKey"]["signature"] = json!("@@@@")),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature missing",
            m(|b, _| {
                b["signedPreKey"]
                    .as_object_mut()
                    .unwrap()
                    .remove("signature");
            }),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey keyId over 16777215",
            m(|b, _| b["signedPreKey"]["keyId"] = json!(16_777_216)),
            "signedPreKey",
            Some("keyId"),
        ),
        (
            "preKeys not a list",
            m(|b, _| b["preKeys"] = json!("x")),
            "preKeys",
            None,
        ),
        (
            "preKey publicKey 32 bytes",
            m(|b, _| b["preKeys"][1]["publicKey"] = json!(key_with(32, 0x05))),
            "preKeys",
            Some("publicKey"),
        ),
        (
            "preKey publicKey type byte 0x08",
            m(|b, _| b["preKeys"][0]["publicKey"] = json!(key_with(33, 0x08))),
            "preKeys",
            Some("publicKey"),
        ),
        (
            "preKey publicKey not base64",
            m(|b, _| b["preKeys"][0]["publicKey"] = json!("%%%")),
            "preKeys",
            Some("publicKey"),
        ),
        (
            "preKey keyId over 16777215",
            m(|b, _| b["preKeys"][0]["keyId"] = json!(16_777_216)),
            "preKeys",
            Some("keyId"),
        ),
        (
            "preKey keyId negative",
            m(|b, _| b["preKeys"][0]["keyId"] = json!(-1)),
            "preKeys",
            Some("keyId"),
        ),
        (
            "preKey keyId missing",
            m(|b, _| {
                b["preKeys"][0].as_object_mut().unwrap().remove("keyId");
            }),
            "preKeys",
            Some("keyId"),
        ),
        (
            "kyberPreKey publicKey is a signed EC key",
            m(|b, id| {
                b["kyberPreKeys"][0] = signed_over(id, 1, &KeyPair::generate().public);
            }),
            "kyberPreKeys",
            Some("publicKey"),
        ),
        (
            "kyberPreKey publicKey 1569 bytes with type byte 0x05",
            m(|b, id| {
                let mut k = kyber_key();
                k[0] = 0x05;
                b["kyberPreKeys"][0] = signed_over(id, 1, &k);
            }),
            "kyberPreKeys",
            Some("publicKey"),
        ),
        (
            "kyberPreKey publicKey 1568 bytes",
            m(|b, id| {
                let k = kyber_key()[..1568].to_vec();
                b["kyberPreKeys"][0] = signed_over(id, 1, &k);
            }),
            "kyberPreKeys",
            Some("publicKey"),
        ),
        (
            "kyberPreKey signature 32 bytes",
            m(|b, _| {
                let sig = b64d(&b["kyberPreKeys"][0]["signature"]);
                b["kyberPreKeys"][0]["signature"] = json!(b64::encode(&sig[..32]));
            }),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "kyberPreKeys not a list",
            m(|b, _| b["kyberPreKeys"] = json!({"keyId": 1})),
            "kyberPreKeys",
            None,
        ),
        (
            "lastResortKyberPreKey publicKey 1570 bytes",
            m(|b, id| {
                let mut k = kyber_key();
                k.push(1);
                b["lastResortKyberPreKey"] = signed_over(id, 9, &k);
            }),
            "lastResortKyberPreKey",
            Some("publicKey"),
        ),
        (
            "lastResortKyberPreKey is an EC key",
            m(|b, id| {
                b["lastResortKyberPreKey"] = signed_over(id, 9, &KeyPair::generate().public);
            }),
            "lastResortKyberPreKey",
            Some("publicKey"),
        ),
        (
            "lastResortKyberPreKey signature missing",
            m(|b, _| {
                b["lastResortKyberPreKey"]
                    .as_object_mut()
                    .unwrap()
                    .remove("signature");
            }),
            "lastResortKyberPreKey",
            Some("signature"),
        ),
    ];
    for (i, (what, mutate, field, inner)) in cases.iter().enumerate() {
        let mut body = u.device_body(1, 3, 2, true);
        mutate(&mut body, &u.identity);
        let slash = SLASHES[i % 2];
        assert_create_refused(
            &s,
            &u,
            &format!("/device/31{slash}"),
            &body,
            (field, *inner),
            what,
        )
        .await;
    }
    // Nothing was stored by any refused create: a correct one still works.
    let (status, res) = create(&s, &u, "/device/31", &u.device_body(1, 3, 2, true)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(counts(&s, &u).await, (3, 2));
}

#[tokio::test]
async fn device_create_accepts_base64_without_padding() {
    let s = TestServer::start().await;
    let u = user_for(&s, "unpadded", 32).await;
    let mut body = u.device_body(1, 1, 0, false);
    for ptr in [
        "/identityKey",
        "/signedPreKey/publicKey",
        "/signedPreKey/signature",
        "/preKeys/0/publicKey",
    ] {
        let v = body.pointer_mut(ptr).unwrap();
        let t = v.as_str().unwrap().trim_end_matches('=').to_string();
        *v = json!(t);
    }
    let signature = b64d(&body["signedPreKey"]["signature"]);
    let (status, res) = create(&s, &u, "/device/", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let info = device_info(&s, &u).await;
    assert_eq!(info["identityKey"], b64::encode(&u.identity.public));
    // Output is padded: a 64-byte signature comes back as 88 characters ending in "==".
    let peer = s.user_with_device("unpaddedpeer", 33, 0, 0).await;
    let b = bundle_ok(&s, &peer, "unpadded", "").await;
    let text = b["signedPreKey"]["signature"].as_str().unwrap();
    assert_eq!(text, b64::encode(&signature));
    assert_eq!(text.len(), 88);
    assert!(text.ends_with("=="), "{text}");
}

#[tokio::test]
async fn device_create_refuses_signatures_that_do_not_verify() {
    let s = TestServer::start().await;
    let u = user_for(&s, "forger", 41).await;
    let cases: Vec<(&str, Mutation, &str, Option<&str>)> = vec![
        (
            "signedPreKey signed by another key",
            m(|b, _| b["signedPreKey"] = signed_ec(&KeyPair::generate(), 1)),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature tampered in R",
            flip_at("/signedPreKey/signature", 3, 0x10),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature tampered in s",
            flip_at("/signedPreKey/signature", 40, 0x01),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey sign bit flipped",
            flip_at("/signedPreKey/signature", 63, 0x80),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature of another key",
            m(|b, id| {
                let other = KeyPair::generate().public;
                b["signedPreKey"]["signature"] = json!(b64::encode(&id.sign(&other)));
            }),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey publicKey swapped after signing",
            m(|b, _| {
                b["signedPreKey"]["publicKey"] = json!(b64::encode(&KeyPair::generate().public))
            }),
            "signedPreKey",
            None,
        ),
        (
            "signedPreKey all-zero signature",
            m(|b, _| b["signedPreKey"]["signature"] = json!(b64::encode(&[0u8; 64]))),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "kyberPreKey signed by another key",
            m(|b, _| b["kyberPreKeys"][1] = signed_kyber(&KeyPair::generate(), 2)),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "kyberPreKey signature tampered",
            flip_at("/kyberPreKeys/0/signature", 10, 0x04),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "kyberPreKey publicKey tampered after signing",
            flip_at("/kyberPreKeys/0/publicKey", 700, 0x01),
            "kyberPreKeys",
            None,
        ),
        (
            "lastResortKyberPreKey signed by another key",
            m(|b, _| b["lastResortKyberPreKey"] = signed_kyber(&KeyPair::generate(), 999_999)),
            "lastResortKyberPreKey",
            Some("signature"),
        ),
        (
            "lastResortKyberPreKey sign bit flipped",
            flip_at("/lastResortKyberPreKey/signature", 63, 0x80),
            "lastResortKyberPreKey",
            Some("signature"),
        ),
    ];
    for (i, (what, mutate, field, inner)) in cases.iter().enumerate() {
        let mut body = u.device_body(1, 3, 2, true);
        mutate(&mut body, &u.identity);
        let slash = SLASHES[i % 2];
        assert_create_refused(
            &s,
            &u,
            &format!("/device/41{slash}"),
            &body,
            (field, *inner),
            what,
        )
        .await;
    }
    // An identity key that signed none of the keys: every signature fails.
    let mut body = u.device_body(1, 1, 1, true);
    body["identityKey"] = json!(b64::encode(&KeyPair::generate().public));
    assert_create_refused(
        &s,
        &u,
        "/device/",
        &body,
        ("signedPreKey", Some("signature")),
        "foreign identity key",
    )
    .await;

    let (status, res) = create(&s, &u, "/device/41", &u.device_body(1, 3, 2, true)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
}

#[tokio::test]
async fn kyber_upload_refuses_bad_signatures_and_keys_and_stores_nothing() {
    let s = TestServer::start().await;
    let u = s.user_with_device("kyberbad", 221, 0, 2).await;
    let peer = s.user_with_device("kyberbadpeer", 222, 0, 0).await;
    let original = device_info(&s, &u).await;
    let cases: Vec<(&str, Mutation, &str, Option<&str>)> = vec![
        (
            "one-time key signed by another key",
            m(|b, _| b["kyberPreKeys"][2] = signed_kyber(&KeyPair::generate(), 12)),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "one-time key signature tampered",
            flip_at("/kyberPreKeys/0/signature", 5, 0x20),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "one-time key sign bit flipped",
            flip_at("/kyberPreKeys/1/signature", 63, 0x80),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "one-time key is an EC key",
            m(|b, id| b["kyberPreKeys"][0] = signed_over(id, 10, &KeyPair::generate().public)),
            "kyberPreKeys",
            Some("publicKey"),
        ),
        (
            "one-time key with type byte 0x05",
            m(|b, id| {
                let mut k = kyber_key();
                k[0] = 0x05;
                b["kyberPreKeys"][0] = signed_over(id, 10, &k);
            }),
            "kyberPreKeys",
            Some("publicKey"),
        ),
        (
            "signature 63 bytes",
            m(|b, _| {
                let sig = b64d(&b["kyberPreKeys"][0]["signature"]);
                b["kyberPreKeys"][0]["signature"] = json!(b64::encode(&sig[..63]));
            }),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "duplicate keyId",
            m(|b, _| b["kyberPreKeys"][2]["keyId"] = json!(10)),
            "kyberPreKeys",
            None,
        ),
        (
            "last resort signed by another key",
            m(|b, _| b["lastResortKyberPreKey"] = signed_kyber(&KeyPair::generate(), 77)),
            "lastResortKyberPreKey",
            Some("signature"),
        ),
        (
            "last resort tampered",
            flip_at("/lastResortKyberPreKey/signature", 30, 0x01),
            "lastResortKyberPreKey",
            Some("signature"),
        ),
        (
            "last resort is an EC key",
            m(|b, id| {
                b["lastResortKyberPreKey"] = signed_over(id, 77, &KeyPair::generate().public)
            }),
            "lastResortKyberPreKey",
            Some("publicKey"),
        ),
    ];
    for (i, (what, mutate, field, inner)) in cases.iter().enumerate() {
        let mut body = json!({
            "kyberPreKeys": kyber_prekeys(&u.identity, 10..=12),
            "lastResortKyberPreKey": signed_kyber(&u.identity, 77),
        });
        mutate(&mut body, &u.identity);
        let path = format!("/kyberprekeys/221{}", SLASHES[i % 2]);
        let (status, res) = s.post(&path, &u.token, body).await;
        assert_invalid_in(&(status, &res), field, *inner, what);
        assert_eq!(
            device_info(&s, &u).await,
            original,
            "{what}: something was stored"
        );
    }
    // Neither the one-time keys nor the last-resort key of a refused upload were stored.
    let last_resort = original_last_resort(&s, &peer, "kyberbad").await;
    assert_eq!(last_resort["keyId"], 999_999);
}

/// Drains a target's one-time Kyber keys (ids 1..=2 from `user_with_device`) and answers the
/// last-resort key handed out afterwards.
async fn original_last_resort(s: &TestServer, peer: &TestUser, target: &str) -> Value {
    for id in 1..=2 {
        let b = bundle_ok(s, peer, target, "").await;
        assert_eq!(b["kyberPreKey"]["keyId"], id, "{b}");
    }
    bundle_ok(s, peer, target, "").await["kyberPreKey"].clone()
}
