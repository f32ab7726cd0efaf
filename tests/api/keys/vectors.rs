//! Keys made by libsignal itself (`tests/data/libsignal_vectors.json`, both XEdDSA sign bits):
//! accepted, handed back byte for byte, and refused with one flipped signature bit.

use std::collections::BTreeSet;

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/libsignal_vectors.json"
    ))
    .expect("vectors file");
    let v: Value = serde_json::from_str(&text).expect("vectors JSON");
    v["identities"].as_array().expect("identities").clone()
}

/// A device body built from one libsignal identity.
fn vector_body(username: &str, reg_id: u32, v: &Value) -> Value {
    json!({
        "address": format!("{username}.1"),
        "identityKey": v["identityKey"],
        "registrationId": reg_id,
        "preKeys": v["preKeys"],
        "signedPreKey": v["signedPreKey"],
        "kyberPreKeys": v["kyberPreKeys"],
        "lastResortKyberPreKey": v["lastResortKyberPreKey"],
    })
}

fn sorted_ids(list: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["keyId"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

// libsignal vectors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn libsignal_vectors_create_devices_for_both_sign_bits_with_kyber_and_last_resort() {
    let s = TestServer::start().await;
    let vectors = vectors();
    assert_eq!(vectors.len(), 8);
    let bits: BTreeSet<u64> = vectors
        .iter()
        .map(|v| v["signSignBit"].as_u64().unwrap())
        .collect();
    assert_eq!(bits, BTreeSet::from([0, 1]), "vectors cover both sign bits");
    let requester = s.user_with_device("vectorpeer", 9, 0, 0).await;
    for (i, v) in vectors.iter().enumerate() {
        let name = format!("Vector{i}");
        let reg_id = 100 + i as u32;
        let u = user_for(&s, &name, reg_id).await;
        let slash = SLASHES[i % 2];
        let (status, res) = create(
            &s,
            &u,
            &format!("/device/{reg_id}{slash}"),
            &vector_body(&name, reg_id, v),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "vector {i} (sign bit {}): {res}",
            v["signSignBit"]
        );
        let info = device_info(&s, &u).await;
        assert_eq!(info["identityKey"], v["identityKey"], "vector {i}");
        assert_eq!(
            info["signedPreKeyId"], v["signedPreKey"]["keyId"],
            "vector {i}"
        );
        assert_eq!(info["preKeyCount"], 3, "vector {i}");
        assert_eq!(info["kyberPreKeyCount"], 2, "vector {i}");
        assert_eq!(info["hasLastResortKyberPreKey"], true, "vector {i}");

        // The bundle gives the vector's keys back byte for byte, lowest keyId first.
        let ec_ids = sorted_ids(&v["preKeys"]);
        let ky_ids = sorted_ids(&v["kyberPreKeys"]);
        for round in 0..4 {
            let b = bundle_ok(&s, &requester, &name.to_lowercase(), SLASHES[round % 2]).await;
            assert_eq!(b["identityKey"], v["identityKey"], "vector {i}");
            assert_eq!(b["registrationId"], reg_id, "vector {i}");
            assert_eq!(b["signedPreKey"], v["signedPreKey"], "vector {i}");
            match ec_ids.get(round) {
                Some(id) => {
                    let want = v["preKeys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|k| k["keyId"] == *id)
                        .unwrap();
                    assert_eq!(&b["preKey"], want, "vector {i} round {round}");
                }
                None => assert!(b.get("preKey").is_none(), "vector {i} round {round}: {b}"),
            }
            let want = match ky_ids.get(round) {
                Some(id) => v["kyberPreKeys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["keyId"] == *id)
                    .unwrap()
                    .clone(),
                None => v["lastResortKyberPreKey"].clone(),
            };
            assert_eq!(b["kyberPreKey"], want, "vector {i} round {round}");
        }
    }
}

#[tokio::test]
async fn libsignal_vectors_with_one_flipped_signature_bit_are_refused() {
    let s = TestServer::start().await;
    for (i, v) in vectors().iter().enumerate() {
        let name = format!("flipped{i}");
        let reg_id = 200 + i as u32;
        let u = user_for(&s, &name, reg_id).await;
        let flips: [(&str, &str, usize, u8); 6] = [
            ("/signedPreKey/signature", "signedPreKey", 0, 0x01),
            ("/signedPreKey/signature", "signedPreKey", 63, 0x80),
            ("/signedPreKey/signature", "signedPreKey", 33, 0x02),
            ("/kyberPreKeys/0/signature", "kyberPreKeys", 17, 0x40),
            ("/kyberPreKeys/1/signature", "kyberPreKeys", 63, 0x80),
            (
                "/lastResortKyberPreKey/signature",
                "lastResortKyberPreKey",
                50,
                0x08,
            ),
        ];
        for (j, (ptr, field, byte, mask)) in flips.iter().enumerate() {
            let mut body = vector_body(&name, reg_id, v);
            let sig = body.pointer(ptr).unwrap().clone();
            *body.pointer_mut(ptr).unwrap() = flip(&sig, *byte, *mask);
            assert_create_refused(
                &s,
                &u,
                &format!("/device/{reg_id}{}", SLASHES[j % 2]),
                &body,
                (field, Some("signature")),
                format!("vector {i}: {ptr} byte {byte} ^ {mask:#x}"),
            )
            .await;
        }
        let (status, res) = create(
            &s,
            &u,
            &format!("/device/{reg_id}"),
            &vector_body(&name, reg_id, v),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "vector {i} unmodified: {res}");
    }
}

#[tokio::test]
async fn libsignal_vector_signed_prekey_and_kyber_uploads_verify_for_both_sign_bits() {
    let s = TestServer::start().await;
    for (i, v) in vectors().iter().enumerate() {
        let name = format!("vecupload{i}");
        let reg_id = 300 + i as u32;
        let u = user_for(&s, &name, reg_id).await;
        let mut body = vector_body(&name, reg_id, v);
        body["kyberPreKeys"] = json!([]);
        body.as_object_mut()
            .unwrap()
            .remove("lastResortKyberPreKey");
        let (status, res) = create(&s, &u, "/device/", &body).await;
        assert_eq!(status, StatusCode::CREATED, "vector {i}: {res}");
        // The vector's own keys, uploaded after the fact, verify against the stored identity.
        let (status, res) = s
            .post(
                &format!("/kyberprekeys/{reg_id}"),
                &u.token,
                json!({"kyberPreKeys": v["kyberPreKeys"], "lastResortKyberPreKey": v["lastResortKyberPreKey"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "vector {i} kyber upload: {res}");
        let (status, res) = s
            .post(
                &format!("/signedprekey/{reg_id}/"),
                &u.token,
                v["signedPreKey"].clone(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "vector {i} signed upload: {res}");
        let mut tampered = v["signedPreKey"].clone();
        tampered["signature"] = flip(&tampered["signature"], 63, 0x80);
        let (status, res) = s
            .post(&format!("/signedprekey/{reg_id}"), &u.token, tampered)
            .await;
        assert_invalid_in(
            &(status, &res),
            "signature",
            None,
            format!("vector {i} sign bit"),
        );
        let info = device_info(&s, &u).await;
        assert_eq!(info["kyberPreKeyCount"], 2);
        assert_eq!(info["hasLastResortKyberPreKey"], true);
    }
}
