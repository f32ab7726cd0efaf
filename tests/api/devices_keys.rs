//! Devices and keys over real HTTP: device create / show / delete, prekey, Kyber and signed-prekey
//! uploads, the prekey bundle (one-time keys handed out once, lowest keyId first, under
//! concurrency), isolation between users, and the bundle rate limit. Every rule of the "Devices"
//! and "Keys" sections of API.md, with and without a trailing slash.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::helpers::{
    ec_prekeys, kyber_key, kyber_prekeys, signed_ec, signed_kyber, TestServer, TestUser,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};

/// Both spellings of every path: without and with the trailing slash.
const SLASHES: [&str; 2] = ["", "/"];

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, ctx: &str) {
    assert_eq!(status, want, "{ctx}: status (body {body})");
    assert_eq!(body["code"], code, "{ctx}: code (body {body})");
    assert!(
        body["message"].is_string(),
        "{ctx}: error without a message: {body}"
    );
}

/// Whether `key` is an object key anywhere inside `v`.
fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(key) || m.values().any(|x| has_key(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key(x, key)),
        _ => false,
    }
}

/// 400 `invalid_data` whose `errors` names `field` (and, inside it, `inner`).
#[track_caller]
fn assert_invalid(status: StatusCode, body: &Value, field: &str, inner: Option<&str>, ctx: &str) {
    assert_error(status, body, StatusCode::BAD_REQUEST, "invalid_data", ctx);
    let errors = &body["errors"];
    assert!(errors.is_object(), "{ctx}: no errors object: {body}");
    assert!(
        errors.get(field).is_some(),
        "{ctx}: errors does not name {field}: {body}"
    );
    if let Some(inner) = inner {
        assert!(
            has_key(&errors[field], inner),
            "{ctx}: errors.{field} does not name {inner}: {body}"
        );
    }
}

fn b64d(text: &Value) -> Vec<u8> {
    b64::decode(text.as_str().expect("a base64 string")).expect("valid base64")
}

/// The same base64 value with one bit flipped (`byte`, `mask`).
fn flip(text: &Value, byte: usize, mask: u8) -> Value {
    let mut bytes = b64d(text);
    bytes[byte] ^= mask;
    json!(b64::encode(&bytes))
}

fn key_with(len: usize, type_byte: u8) -> String {
    let mut k = vec![type_byte];
    k.extend((1..len).map(|_| rand::random::<u8>()));
    b64::encode(&k)
}

/// A `{keyId, publicKey, signature}` over `key`, signed by `signer`.
fn signed_over(signer: &KeyPair, key_id: u32, key: &[u8]) -> Value {
    json!({"keyId": key_id, "publicKey": b64::encode(key), "signature": b64::encode(&signer.sign(key))})
}

async fn create(s: &TestServer, u: &TestUser, path: &str, body: &Value) -> (StatusCode, Value) {
    s.call("POST", path, Some(&u.token), Some(body)).await
}

/// GET /device/, which must answer 200.
async fn device_info(s: &TestServer, u: &TestUser) -> Value {
    let (status, body) = s.get("/device/", &u.token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /device/ for {}: {body}",
        u.username
    );
    body
}

/// GET /device/ must say the caller has no device.
async fn assert_no_device(s: &TestServer, u: &TestUser, ctx: &str) {
    let (status, body) = s.get("/device/", &u.token).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "no_device", ctx);
}

/// (preKeyCount, kyberPreKeyCount) from GET /prekeys/<regId>.
async fn counts(s: &TestServer, u: &TestUser) -> (u64, u64) {
    let (status, body) = s.get(&format!("/prekeys/{}", u.reg_id), &u.token).await;
    assert_eq!(status, StatusCode::OK, "GET /prekeys: {body}");
    (
        body["preKeyCount"].as_u64().expect("preKeyCount"),
        body["kyberPreKeyCount"].as_u64().expect("kyberPreKeyCount"),
    )
}

async fn bundle(
    s: &TestServer,
    requester: &TestUser,
    target: &str,
    slash: &str,
) -> (StatusCode, Value) {
    s.get(
        &format!("/prekeybundle/{target}/{}{slash}", requester.reg_id),
        &requester.token,
    )
    .await
}

/// A bundle fetch that must succeed.
async fn bundle_ok(s: &TestServer, requester: &TestUser, target: &str, slash: &str) -> Value {
    let (status, body) = bundle(s, requester, target, slash).await;
    assert_eq!(status, StatusCode::OK, "bundle of {target}: {body}");
    body
}

/// A registered user (no device yet) whose device will have `reg_id`.
async fn user_for(s: &TestServer, name: &str, reg_id: u32) -> TestUser {
    let mut u = s.user(name).await;
    u.reg_id = reg_id;
    u
}

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

fn object_keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn keys_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn raw_get(s: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

// ---------------------------------------------------------------------------------------------
// Device create
// ---------------------------------------------------------------------------------------------

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
            status,
            &res,
            StatusCode::FORBIDDEN,
            "device_exists",
            &format!("second create, slash {slash:?}"),
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
        let (status, res) = create(&s, &u, &format!("/device/21{slash}"), &body).await;
        assert_invalid(status, &res, "address", None, &format!("address {address}"));
        assert_no_device(&s, &u, &format!("after address {address}")).await;
    }
    // Missing altogether.
    let mut body = u.device_body(1, 1, 1, true);
    body.as_object_mut().unwrap().remove("address");
    let (status, res) = create(&s, &u, "/device/21", &body).await;
    assert_invalid(status, &res, "address", None, "no address");
    assert_no_device(&s, &u, "after no address").await;

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

type Mutation = Box<dyn Fn(&mut Value, &KeyPair)>;

/// A change to a request body (which may need the device's identity key).
fn m(f: impl Fn(&mut Value, &KeyPair) + 'static) -> Mutation {
    Box::new(f)
}

type ItemMutation = Box<dyn Fn(&mut Value)>;

/// A change to a list of prekeys.
fn km(f: impl Fn(&mut Value) + 'static) -> ItemMutation {
    Box::new(f)
}

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
        let (status, res) = create(&s, &u, &format!("/device/31{slash}"), &body).await;
        assert_invalid(status, &res, field, *inner, what);
        assert_no_device(&s, &u, &format!("after {what}")).await;
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
            m(|b, _| {
                b["signedPreKey"]["signature"] = flip(&b["signedPreKey"]["signature"], 3, 0x10)
            }),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey signature tampered in s",
            m(|b, _| {
                b["signedPreKey"]["signature"] = flip(&b["signedPreKey"]["signature"], 40, 0x01)
            }),
            "signedPreKey",
            Some("signature"),
        ),
        (
            "signedPreKey sign bit flipped",
            m(|b, _| {
                b["signedPreKey"]["signature"] = flip(&b["signedPreKey"]["signature"], 63, 0x80)
            }),
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
            m(|b, _| {
                b["kyberPreKeys"][0]["signature"] =
                    flip(&b["kyberPreKeys"][0]["signature"], 10, 0x04)
            }),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "kyberPreKey publicKey tampered after signing",
            m(|b, _| {
                b["kyberPreKeys"][0]["publicKey"] =
                    flip(&b["kyberPreKeys"][0]["publicKey"], 700, 0x01)
            }),
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
            m(|b, _| {
                b["lastResortKyberPreKey"]["signature"] =
                    flip(&b["lastResortKyberPreKey"]["signature"], 63, 0x80)
            }),
            "lastResortKyberPreKey",
            Some("signature"),
        ),
    ];
    for (i, (what, mutate, field, inner)) in cases.iter().enumerate() {
        let mut body = u.device_body(1, 3, 2, true);
        mutate(&mut body, &u.identity);
        let slash = SLASHES[i % 2];
        let (status, res) = create(&s, &u, &format!("/device/41{slash}"), &body).await;
        assert_invalid(status, &res, field, *inner, what);
        assert_no_device(&s, &u, &format!("after {what}")).await;
    }
    // An identity key that signed none of the keys: every signature fails.
    let mut body = u.device_body(1, 1, 1, true);
    body["identityKey"] = json!(b64::encode(&KeyPair::generate().public));
    let (status, res) = create(&s, &u, "/device/", &body).await;
    assert_invalid(
        status,
        &res,
        "signedPreKey",
        Some("signature"),
        "foreign identity key",
    );
    assert_no_device(&s, &u, "after foreign identity key").await;

    let (status, res) = create(&s, &u, "/device/41", &u.device_body(1, 3, 2, true)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
}

#[tokio::test]
async fn device_create_refuses_duplicate_key_ids_in_the_request() {
    let s = TestServer::start().await;
    let u = user_for(&s, "dupes", 51).await;
    for slash in SLASHES {
        let mut body = u.device_body(1, 0, 0, true);
        body["preKeys"] = ec_prekeys([1, 2, 3, 2]);
        let (status, res) = create(&s, &u, &format!("/device/51{slash}"), &body).await;
        assert_invalid(status, &res, "preKeys", None, "duplicate EC keyId");
        assert_no_device(&s, &u, "after duplicate EC keyId").await;

        let mut body = u.device_body(1, 2, 0, true);
        body["kyberPreKeys"] = kyber_prekeys(&u.identity, [7, 8, 7]);
        let (status, res) = create(&s, &u, &format!("/device/51{slash}"), &body).await;
        assert_invalid(status, &res, "kyberPreKeys", None, "duplicate Kyber keyId");
        assert_no_device(&s, &u, "after duplicate Kyber keyId").await;
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
    let (status, res) = create(&s, &u, "/device/61", &body).await;
    assert_invalid(status, &res, "preKeys", None, "101 EC prekeys");
    assert_no_device(&s, &u, "after 101 EC prekeys").await;

    let mut body = u.device_body(1, 0, 0, true);
    body["kyberPreKeys"] = kyber_prekeys(&u.identity, 1..=101);
    let (status, res) = create(&s, &u, "/device/61/", &body).await;
    assert_invalid(status, &res, "kyberPreKeys", None, "101 Kyber prekeys");
    assert_no_device(&s, &u, "after 101 Kyber prekeys").await;

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
        let (status, res) = create(
            &s,
            &u,
            &format!("/device/62{slash}"),
            &u.device_body(1, 11, 0, true),
        )
        .await;
        assert_invalid(status, &res, "preKeys", None, "11 EC prekeys, cap 10");
        assert_no_device(&s, &u, "after 11 EC prekeys").await;
        let (status, res) = create(
            &s,
            &u,
            &format!("/device/62{slash}"),
            &u.device_body(1, 0, 11, true),
        )
        .await;
        assert_invalid(
            status,
            &res,
            "kyberPreKeys",
            None,
            "11 Kyber prekeys, cap 10",
        );
        assert_no_device(&s, &u, "after 11 Kyber prekeys").await;
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
    let (status, res) = create(&s, &u, "/device/71", &body).await;
    assert_invalid(
        status,
        &res,
        "lastResortKyberPreKey",
        None,
        "bad last resort",
    );
    assert_no_device(&s, &u, "after bad last resort").await;
    let (status, res) = s.get("/prekeys/71", &u.token).await;
    assert_error(
        status,
        &res,
        StatusCode::BAD_REQUEST,
        "no_device",
        "GET /prekeys",
    );
    let (status, res) = bundle(&s, &peer, "atomic", "").await;
    assert_error(
        status,
        &res,
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

// ---------------------------------------------------------------------------------------------
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
            let (status, res) = create(
                &s,
                &u,
                &format!("/device/{reg_id}{}", SLASHES[j % 2]),
                &body,
            )
            .await;
            assert_invalid(
                status,
                &res,
                field,
                Some("signature"),
                &format!("vector {i}: {ptr} byte {byte} ^ {mask:#x}"),
            );
            assert_no_device(&s, &u, &format!("vector {i} after {ptr}")).await;
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
        assert_invalid(
            status,
            &res,
            "signature",
            None,
            &format!("vector {i} sign bit"),
        );
        let info = device_info(&s, &u).await;
        assert_eq!(info["kyberPreKeyCount"], 2);
        assert_eq!(info["hasLastResortKyberPreKey"], true);
    }
}

// ---------------------------------------------------------------------------------------------
// GET / DELETE /device
// ---------------------------------------------------------------------------------------------

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
        assert_error(status, &body, StatusCode::BAD_REQUEST, "no_device", path);
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
        assert_error(status, &body, StatusCode::BAD_REQUEST, "no_device", "stock");
        let (status, body) = bundle(&s, &peer, &name, SLASHES[i % 2]).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "no_device",
            &format!("bundle after DELETE {path}"),
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
            let mut req = s.http.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                s.url(path),
            );
            if method == "POST" {
                req = req.json(&u.device_body(1, 1, 1, true));
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(
                res.headers().get("www-authenticate").is_some(),
                "{method} {path}: no WWW-Authenticate"
            );
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "not_authenticated", "{method} {path}");
        }
    }
    assert_no_device(&s, &u, "after unauthenticated create").await;
}

// ---------------------------------------------------------------------------------------------
// POST / GET /prekeys
// ---------------------------------------------------------------------------------------------

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
            status,
            &res,
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            &format!("body {body}"),
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
        status,
        &res,
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
        assert_invalid(status, &res, "preKeys", None, "101 items, bare");
        let (status, res) = s
            .post(
                &format!("/prekeys/131{slash}"),
                &u.token,
                json!({"preKeys": ec_prekeys(1..=101)}),
            )
            .await;
        assert_invalid(status, &res, "preKeys", None, "101 items, object");
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
        assert_invalid(status, &res, "preKeys", *inner, what);
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
            status,
            &res,
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
        status,
        &res,
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
            status,
            &res,
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "11 items with cap 10",
        );
        assert_eq!(counts(&s, &u).await, (0, 0));
    }
}

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
                    status,
                    &res,
                    StatusCode::FORBIDDEN,
                    "device_changed",
                    &format!("{method} {path}"),
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
                status,
                &res,
                StatusCode::BAD_REQUEST,
                "no_device",
                &format!("{method} {path}"),
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
                let mut req = s.http.request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    s.url(&path),
                );
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if let Some(b) = &body {
                    req = req.json(b);
                }
                let res = req.send().await.unwrap();
                assert_eq!(
                    res.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} token {token:?}"
                );
                assert!(
                    res.headers().get("www-authenticate").is_some(),
                    "{method} {path}: no WWW-Authenticate"
                );
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["code"], "not_authenticated", "{method} {path}");
            }
        }
    }
    assert_eq!(counts(&s, &u).await, (2, 2));
    assert_eq!(device_info(&s, &u).await["signedPreKeyId"], 1);
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

// ---------------------------------------------------------------------------------------------
// POST /kyberprekeys
// ---------------------------------------------------------------------------------------------

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

    let (status, res) = s
        .post(
            "/kyberprekeys/202",
            &u2.token,
            json!({"kyberPreKeys": kyber_prekeys(&u2.identity, 1..=3)}),
        )
        .await;
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
    let (status, res) = s
        .post(
            "/kyberprekeys/201",
            &u.token,
            json!({"kyberPreKeys": kyber_prekeys(&u.identity, 1..=2)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, res) = s
        .post(
            "/kyberprekeys/201",
            &u.token,
            json!({"kyberPreKeys": kyber_prekeys(&u.identity, 1..=2)}),
        )
        .await;
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
            status,
            &res,
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            &format!("kyber body #{i}"),
        );
    }
    // An object with neither field: at least one is required.
    let (status, res) = s
        .post("/kyberprekeys/211", &u.token, json!({"foo": 1}))
        .await;
    assert_error(
        status,
        &res,
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
    let (status, res) = s
        .post(
            "/kyberprekeys/211",
            &u.token,
            json!({"kyberPreKeys": kyber_prekeys(&u.identity, 1..=101)}),
        )
        .await;
    assert_invalid(status, &res, "kyberPreKeys", None, "101 Kyber keys");
    assert_eq!(counts(&s, &u).await, (0, 2));
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
            m(|b, _| {
                b["kyberPreKeys"][0]["signature"] =
                    flip(&b["kyberPreKeys"][0]["signature"], 5, 0x20)
            }),
            "kyberPreKeys",
            Some("signature"),
        ),
        (
            "one-time key sign bit flipped",
            m(|b, _| {
                b["kyberPreKeys"][1]["signature"] =
                    flip(&b["kyberPreKeys"][1]["signature"], 63, 0x80)
            }),
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
            m(|b, _| {
                b["lastResortKyberPreKey"]["signature"] =
                    flip(&b["lastResortKyberPreKey"]["signature"], 30, 0x01)
            }),
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
        assert_invalid(status, &res, field, *inner, what);
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

#[tokio::test]
async fn kyber_cap_is_separate_from_the_ec_cap_and_ignores_the_last_resort_key() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-prekeys", "10"]).await;
    let full = s.user_with_device("fullkeys", 231, 10, 10).await;
    for slash in SLASHES {
        let (status, res) = s
            .post(
                &format!("/kyberprekeys/231{slash}"),
                &full.token,
                json!({"kyberPreKeys": kyber_prekeys(&full.identity, [11])}),
            )
            .await;
        assert_error(
            status,
            &res,
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
            status,
            &res,
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
            status,
            &res,
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
    let (status, res) = s
        .post(
            "/kyberprekeys/232",
            &ec_full.token,
            json!({"kyberPreKeys": kyber_prekeys(&ec_full.identity, 1..=10)}),
        )
        .await;
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
        let (status, res) = s
            .post(
                &format!("/kyberprekeys/234{slash}"),
                &empty.token,
                json!({"kyberPreKeys": kyber_prekeys(&empty.identity, 1..=11)}),
            )
            .await;
        assert_error(
            status,
            &res,
            StatusCode::BAD_REQUEST,
            "reached_max_prekeys",
            "11 Kyber items with cap 10",
        );
        assert_eq!(counts(&s, &empty).await, (0, 0));
    }
}

// ---------------------------------------------------------------------------------------------
// POST /signedprekey
// ---------------------------------------------------------------------------------------------

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
        assert_invalid(status, &res, field, None, what);
        assert_eq!(device_info(&s, &u).await["signedPreKeyId"], 1, "{what}");
    }
    for body in [json!([]), json!({}), json!([signed_ec(id, 9)]), json!("x")] {
        let (status, res) = s.post("/signedprekey/251", &u.token, body.clone()).await;
        assert_error(
            status,
            &res,
            StatusCode::FORBIDDEN,
            "incorrect_arguments",
            &format!("signed body {body}"),
        );
    }
    let after = bundle_ok(&s, &peer, "badsigner", "").await["signedPreKey"].clone();
    assert_eq!(after, before);
}

// ---------------------------------------------------------------------------------------------
// GET /prekeybundle
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bundle_matches_the_username_case_insensitively_and_percent_decoded() {
    let s = TestServer::start().await;
    let target = s.user_with_device("a.b+c@d", 261, 12, 0).await;
    let peer = s.user_with_device("bundlepeer", 262, 0, 0).await;
    for (i, name) in [
        "a.b+c@d",
        "a%2Eb%2Bc%40d",
        "a%2eb%2bc%40d",
        "A.B+C@D",
        "A%2EB%2BC%40D",
        "a.b%2Bc%40D",
    ]
    .iter()
    .enumerate()
    {
        for slash in SLASHES {
            let b = bundle_ok(&s, &peer, name, slash).await;
            assert_eq!(b["address"], "a.b+c@d.1", "{name}{slash}: {b}");
            assert_eq!(b["registrationId"], 261);
            assert!(b.get("preKey").is_some(), "{name}{slash} #{i}: {b}");
        }
    }
    assert_eq!(counts(&s, &target).await, (0, 0));
    // A different name is someone else (or no one).
    let (status, res) = bundle(&s, &peer, "a.b+c", "").await;
    assert_error(
        status,
        &res,
        StatusCode::BAD_REQUEST,
        "no_recipient",
        "a.b+c",
    );
    let (status, res) = bundle(&s, &peer, "a.b%20c@d", "").await;
    assert_error(
        status,
        &res,
        StatusCode::BAD_REQUEST,
        "no_recipient",
        "a.b c@d",
    );
}

#[tokio::test]
async fn bundle_has_the_documented_shape() {
    let s = TestServer::start().await;
    let target = s.user_with_device("Shaped", 271, 1, 1).await;
    let peer = s.user_with_device("shapedpeer", 272, 0, 0).await;
    let b = bundle_ok(&s, &peer, "shaped", "/").await;
    assert_eq!(
        object_keys(&b),
        keys_of(&[
            "address",
            "identityKey",
            "registrationId",
            "preKey",
            "signedPreKey",
            "kyberPreKey"
        ]),
        "{b}"
    );
    assert_eq!(b["address"], "Shaped.1");
    assert_eq!(b["identityKey"], b64::encode(&target.identity.public));
    assert_eq!(b["registrationId"], 271);
    assert_eq!(object_keys(&b["preKey"]), keys_of(&["keyId", "publicKey"]));
    assert_eq!(b["preKey"]["keyId"], 1);
    assert_eq!(b64d(&b["preKey"]["publicKey"]).len(), 33);
    let three = keys_of(&["keyId", "publicKey", "signature"]);
    assert_eq!(object_keys(&b["signedPreKey"]), three);
    assert_eq!(object_keys(&b["kyberPreKey"]), three);
    assert_eq!(b["kyberPreKey"]["keyId"], 1);
    // The handed-out keys are what the device signed: verify with the identity key.
    for k in [&b["signedPreKey"], &b["kyberPreKey"]] {
        let key = b64d(&k["publicKey"]);
        let sig = b64d(&k["signature"]);
        assert!(
            signal_server::crypto::verify_signature(&target.identity.public, &key, &sig),
            "{k}"
        );
    }
    assert_eq!(b64d(&b["kyberPreKey"]["publicKey"]).len(), 1569);
    assert_eq!(b64d(&b["kyberPreKey"]["publicKey"])[0], 0x08);
    // Next: no one-time keys left; the last-resort key instead.
    let b = bundle_ok(&s, &peer, "shaped", "").await;
    assert_eq!(
        object_keys(&b),
        keys_of(&[
            "address",
            "identityKey",
            "registrationId",
            "signedPreKey",
            "kyberPreKey"
        ]),
        "{b}"
    );
    assert_eq!(b["kyberPreKey"]["keyId"], 999_999);
}

#[tokio::test]
async fn bundle_hands_out_the_lowest_key_id_first_and_each_one_time_key_once() {
    let s = TestServer::start().await;
    let target = user_for(&s, "orderly", 281).await;
    let peer = s.user_with_device("orderlypeer", 282, 0, 0).await;
    let mut body = target.device_body(1, 0, 0, true);
    // Out of order, and ids whose byte order differs from their numeric order.
    let ec_ids = [70_000u32, 5, 256, 2, 16_777_215, 0];
    let ky_ids = [300u32, 4, 65_536, 1];
    body["preKeys"] = ec_prekeys(ec_ids);
    body["kyberPreKeys"] = kyber_prekeys(&target.identity, ky_ids);
    let last_resort = body["lastResortKyberPreKey"].clone();
    let (status, res) = create(&s, &target, "/device/", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    // Later uploads join the same order.
    let (status, res) = s.post("/prekeys/281", &target.token, ec_prekeys([3])).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, res) = s
        .post(
            "/kyberprekeys/281",
            &target.token,
            json!({"kyberPreKeys": kyber_prekeys(&target.identity, [2])}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");

    let mut want_ec: Vec<u64> = ec_ids.iter().map(|&i| i as u64).chain([3]).collect();
    want_ec.sort();
    let mut want_ky: Vec<u64> = ky_ids.iter().map(|&i| i as u64).chain([2]).collect();
    want_ky.sort();
    let mut got_ec = Vec::new();
    let mut got_ky = Vec::new();
    for round in 0..10 {
        let b = bundle_ok(&s, &peer, "orderly", SLASHES[round % 2]).await;
        if let Some(id) = b["preKey"]["keyId"].as_u64() {
            got_ec.push(id);
        } else {
            assert!(b.get("preKey").is_none(), "{b}");
        }
        let k = &b["kyberPreKey"];
        if got_ky.len() < want_ky.len() {
            got_ky.push(k["keyId"].as_u64().unwrap());
        } else {
            // Out of one-time Kyber keys: the last-resort key, every time.
            assert_eq!(k, &last_resort, "round {round}");
        }
        let expected = (
            (want_ec.len() - got_ec.len()) as u64,
            (want_ky.len() - got_ky.len()) as u64,
        );
        assert_eq!(counts(&s, &target).await, expected, "round {round}");
    }
    assert_eq!(got_ec, want_ec, "EC keys not lowest-first or not once each");
    assert_eq!(
        got_ky, want_ky,
        "Kyber keys not lowest-first or not once each"
    );
    assert_eq!(
        device_info(&s, &target).await["hasLastResortKyberPreKey"],
        true
    );
}

#[tokio::test]
async fn bundle_omits_pre_key_when_none_left_and_kyber_pre_key_when_neither_exists() {
    let s = TestServer::start().await;
    let target = user_for(&s, "sparse", 291).await;
    let peer = s.user_with_device("sparsepeer", 292, 0, 0).await;
    let (status, res) = create(&s, &target, "/device/", &target.device_body(1, 1, 0, false)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let b = bundle_ok(&s, &peer, "sparse", "").await;
    assert_eq!(b["preKey"]["keyId"], 1, "{b}");
    assert!(b.get("kyberPreKey").is_none(), "{b}");
    for slash in SLASHES {
        let b = bundle_ok(&s, &peer, "sparse", slash).await;
        assert!(b.get("preKey").is_none(), "{b}");
        assert!(b.get("kyberPreKey").is_none(), "{b}");
        assert_eq!(b["signedPreKey"]["keyId"], 1, "{b}");
        assert_eq!(b["registrationId"], 291);
    }
}

#[tokio::test]
async fn bundle_errors_are_no_device_device_changed_and_no_recipient() {
    let s = TestServer::start().await;
    let target = s.user_with_device("wanted", 301, 5, 5).await;
    let caller = s.user_with_device("seeker", 302, 0, 0).await;
    let deviceless_caller = user_for(&s, "seekerless", 303).await;
    let _deviceless_target = s.user("unready").await;
    for slash in SLASHES {
        let (status, res) = bundle(&s, &deviceless_caller, "wanted", slash).await;
        assert_error(
            status,
            &res,
            StatusCode::BAD_REQUEST,
            "no_device",
            "caller without device",
        );

        let (status, res) = s
            .get(&format!("/prekeybundle/wanted/301{slash}"), &caller.token)
            .await;
        assert_error(
            status,
            &res,
            StatusCode::FORBIDDEN,
            "device_changed",
            "wrong regId",
        );

        let (status, res) = bundle(&s, &caller, "nosuchuser", slash).await;
        assert_error(
            status,
            &res,
            StatusCode::BAD_REQUEST,
            "no_recipient",
            "unknown user",
        );

        let (status, res) = bundle(&s, &caller, "unready", slash).await;
        assert_error(
            status,
            &res,
            StatusCode::BAD_REQUEST,
            "no_device",
            "recipient without device",
        );
        assert_eq!(res["message"], "Recipient has not yet registered a device");

        let (status, res) = bundle(&s, &caller, "UNREADY", slash).await;
        assert_error(
            status,
            &res,
            StatusCode::BAD_REQUEST,
            "no_device",
            "UNREADY",
        );
    }
    assert_eq!(
        counts(&s, &target).await,
        (5, 5),
        "a refused bundle took keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bundle_requests_hand_out_each_prekey_exactly_once() {
    const REQUESTERS: usize = 32;
    const TOTAL: usize = 400;
    let s = Arc::new(TestServer::start().await);
    let target = s.user_with_device("popular", 311, 100, 0).await;
    let mut requesters = Vec::new();
    for i in 0..REQUESTERS {
        requesters.push(Arc::new(
            s.user_with_device(&format!("fan{i}"), 1000 + i as u32, 0, 0)
                .await,
        ));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTERS));
    let mut tasks = Vec::new();
    for (i, r) in requesters.iter().enumerate() {
        let (s, r, barrier) = (s.clone(), r.clone(), barrier.clone());
        let n = TOTAL / REQUESTERS + usize::from(i < TOTAL % REQUESTERS);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            let mut empty = 0usize;
            for j in 0..n {
                let (status, b) = bundle(&s, &r, "popular", SLASHES[(i + j) % 2]).await;
                assert_eq!(status, StatusCode::OK, "{b}");
                assert_eq!(b["registrationId"], 311);
                match b.get("preKey") {
                    Some(k) => got.push(k["keyId"].as_u64().expect("keyId")),
                    None => empty += 1,
                }
            }
            (got, empty)
        }));
    }
    let mut all = Vec::new();
    let mut empty = 0;
    for t in tasks {
        let (got, e) = t.await.expect("requester task");
        all.extend(got);
        empty += e;
    }
    all.sort();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<u64>>(),
        "each key exactly once"
    );
    assert_eq!(empty, TOTAL - 100, "answers without a preKey");
    assert_eq!(counts(&s, &target).await, (0, 0));
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

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
                status,
                &res,
                StatusCode::FORBIDDEN,
                "device_changed",
                &format!("attacker {method} {path}"),
            );
        }
        for (method, path, body) in attempts(&key) {
            let (status, res) = s
                .call(method, &path, Some(&loner.token), body.as_ref())
                .await;
            assert_error(
                status,
                &res,
                StatusCode::BAD_REQUEST,
                "no_device",
                &format!("loner {method} {path}"),
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

// ---------------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn eleventh_bundle_fetch_by_one_requester_for_one_target_is_throttled_with_retry_after() {
    let s = TestServer::start_with(&[]).await;
    let target = s.user_with_device("limited", 331, 20, 0).await;
    let a = s.user_with_device("eager", 332, 0, 0).await;
    let b = s.user_with_device("patient", 333, 0, 0).await;
    for i in 0..10 {
        let (status, res) = bundle(&s, &a, "limited", SLASHES[i % 2]).await;
        assert_eq!(status, StatusCode::OK, "fetch {}: {res}", i + 1);
    }
    for slash in SLASHES {
        let res = raw_get(
            &s,
            &format!("/prekeybundle/limited/332{slash}"),
            Some(&a.token),
        )
        .await;
        assert_eq!(
            res.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "11th fetch{slash}"
        );
        let retry = res
            .headers()
            .get("retry-after")
            .expect("Retry-After header")
            .to_str()
            .unwrap()
            .to_string();
        let secs: u64 = retry.trim().parse().expect("Retry-After in seconds");
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "throttled", "{body}");
        assert!(body["message"].is_string());
    }
    // Another requester has its own budget.
    let (status, res) = bundle(&s, &b, "limited", "").await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // Throttled fetches took no key: 10 + 1 were handed out.
    assert_eq!(counts(&s, &target).await, (9, 0));
}
