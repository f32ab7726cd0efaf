//! Key material and the device and key calls of the device, key and bundle tests: real X25519
//! keys with XEdDSA signatures and Kyber-sized keys signed the same way (from the typed
//! client's generators), as JSON values a test may alter.

use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::client::{PreKey, SignedPreKey};
use signal_server::crypto::{b64, KeyPair};

use std::fmt::Display;

use super::{assert_error, assert_invalid_in, TestServer, TestUser};

/// Both spellings of every path: without and with the trailing slash.
pub const SLASHES: [&str; 2] = ["", "/"];

/// One-time EC prekeys with the given ids.
pub fn ec_prekeys(ids: impl IntoIterator<Item = u32>) -> Value {
    let keys: Vec<PreKey> = ids.into_iter().map(PreKey::generate).collect();
    serde_json::to_value(keys).expect("JSON")
}

/// A signed EC prekey, signed by `identity`.
pub fn signed_ec(identity: &KeyPair, key_id: u32) -> Value {
    serde_json::to_value(SignedPreKey::generate_ec(identity, key_id)).expect("JSON")
}

/// A Kyber-sized public key (type byte 0x08 + 1568 random bytes).
pub fn kyber_key() -> Vec<u8> {
    key_bytes(1569, 0x08)
}

/// A Kyber prekey signed by `identity`.
pub fn signed_kyber(identity: &KeyPair, key_id: u32) -> Value {
    serde_json::to_value(SignedPreKey::random_kyber(identity, key_id)).expect("JSON")
}

/// Kyber prekeys with the given ids, signed by `identity`.
pub fn kyber_prekeys(identity: &KeyPair, ids: impl IntoIterator<Item = u32>) -> Value {
    let keys: Vec<SignedPreKey> = ids
        .into_iter()
        .map(|id| SignedPreKey::random_kyber(identity, id))
        .collect();
    serde_json::to_value(keys).expect("JSON")
}

/// `len` random bytes after `type_byte`.
pub fn key_bytes(len: usize, type_byte: u8) -> Vec<u8> {
    let mut k = vec![type_byte];
    k.extend((1..len).map(|_| rand::random::<u8>()));
    k
}

/// `key_bytes` in base64.
pub fn key_with(len: usize, type_byte: u8) -> String {
    b64::encode(&key_bytes(len, type_byte))
}

/// A `{keyId, publicKey, signature}` over `key`, signed by `signer`.
pub fn signed_over(signer: &KeyPair, key_id: u32, key: &[u8]) -> Value {
    serde_json::to_value(SignedPreKey::signed(signer, key_id, key.to_vec())).expect("JSON")
}

/// The bytes of a base64 JSON string.
pub fn b64d(text: &Value) -> Vec<u8> {
    b64::decode(text.as_str().expect("a base64 string")).expect("valid base64")
}

/// The same base64 value with one bit flipped (`byte`, `mask`).
pub fn flip(text: &Value, byte: usize, mask: u8) -> Value {
    let mut bytes = b64d(text);
    bytes[byte] ^= mask;
    json!(b64::encode(&bytes))
}

/// A registered user (no device yet) whose device will have `reg_id`.
pub async fn user_for(s: &TestServer, name: &str, reg_id: u32) -> TestUser {
    let mut u = s.user(name).await;
    u.reg_id = reg_id;
    u
}

/// `POST path` with a device body, as `u`.
pub async fn create(s: &TestServer, u: &TestUser, path: &str, body: &Value) -> (StatusCode, Value) {
    s.call("POST", path, Some(&u.token), Some(body)).await
}

/// `POST path` (a `/kyberprekeys/` route) with `u`'s one-time Kyber keys of `ids`.
pub async fn upload_kyber(
    s: &TestServer,
    u: &TestUser,
    path: &str,
    ids: impl IntoIterator<Item = u32>,
) -> (StatusCode, Value) {
    let body = json!({"kyberPreKeys": kyber_prekeys(&u.identity, ids)});
    s.post(path, &u.token, body).await
}

/// A device create of `body` on `path` is refused as `invalid_data` naming `field` (and, inside
/// it, `inner`), and stores nothing.
pub async fn assert_create_refused(
    s: &TestServer,
    u: &TestUser,
    path: &str,
    body: &Value,
    (field, inner): (&str, Option<&str>),
    what: impl Display,
) {
    let answer = create(s, u, path, body).await;
    assert_invalid_in(&answer, field, inner, &what);
    assert_no_device(s, u, &format!("after {what}")).await;
}

/// `GET /device/`, which must answer 200.
pub async fn device_info(s: &TestServer, u: &TestUser) -> Value {
    let (status, body) = s.get("/device/", &u.token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /device/ of {}: {body}",
        u.username
    );
    body
}

/// `GET /device/` must say the caller has no device.
pub async fn assert_no_device(s: &TestServer, u: &TestUser, what: &str) {
    let answer = s.get("/device/", &u.token).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "no_device", what);
}

/// (preKeyCount, kyberPreKeyCount) from `GET /prekeys/<regId>`.
pub async fn counts(s: &TestServer, u: &TestUser) -> (u64, u64) {
    let c = s.client_of(u).stock(u.reg_id).await.expect("GET /prekeys");
    (c.pre_key_count.into(), c.kyber_pre_key_count.into())
}

/// `GET /prekeybundle/<target>/<requester's regId><slash>`.
pub async fn bundle(
    s: &TestServer,
    requester: &TestUser,
    target: &str,
    slash: &str,
) -> (StatusCode, Value) {
    let path = format!("/prekeybundle/{target}/{}{slash}", requester.reg_id);
    s.get(&path, &requester.token).await
}

/// A bundle fetch that must succeed.
pub async fn bundle_ok(s: &TestServer, requester: &TestUser, target: &str, slash: &str) -> Value {
    let (status, body) = bundle(s, requester, target, slash).await;
    assert_eq!(status, StatusCode::OK, "bundle of {target}: {body}");
    body
}
