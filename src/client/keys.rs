//! Prekeys: uploads, the stock, and other users' bundles.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{base64_bytes, Client, Error};
use crate::crypto::{KeyPair, KYBER_KEY_LEN, KYBER_KEY_TYPE};

/// A one-time EC prekey (`{keyId, publicKey}`; the key is 33 bytes, `0x05` first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreKey {
    pub key_id: u32,
    #[serde(with = "base64_bytes")]
    pub public_key: Vec<u8>,
}

/// A signed prekey (EC signed prekey, or a Kyber prekey): the signature is XEdDSA by the
/// identity key over `public_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPreKey {
    pub key_id: u32,
    #[serde(with = "base64_bytes")]
    pub public_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub signature: Vec<u8>,
}

/// The body of `POST /kyberprekeys/<regId>`: at least one of the two.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KyberUpload {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kyber_pre_keys: Vec<SignedPreKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_resort_kyber_pre_key: Option<SignedPreKey>,
}

/// `{"code", "message"}` of a successful upload or device creation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Stored {
    pub code: String,
    pub message: String,
}

/// `GET /prekeys/<regId>`: the one-time keys left (the last-resort key is not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub pre_key_count: u32,
    pub kyber_pre_key_count: u32,
}

/// Another user's prekey bundle (serializes back to the server's JSON shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub address: String,
    #[serde(with = "base64_bytes")]
    pub identity_key: Vec<u8>,
    pub registration_id: u32,
    /// `None` once the one-time EC prekeys have run out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_key: Option<PreKey>,
    pub signed_pre_key: SignedPreKey,
    /// A one-time Kyber prekey if any is left, else the last-resort one, else `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kyber_pre_key: Option<SignedPreKey>,
}

/// `GET /v2/prekeybundle/<username>/<regId>`: a bundle per device of the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundles {
    #[serde(with = "base64_bytes")]
    pub identity_key: Vec<u8>,
    pub devices: Vec<DeviceBundle>,
}

/// One device's part of `Bundles`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceBundle {
    pub device_id: u32,
    pub registration_id: u32,
    pub signed_pre_key: SignedPreKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_key: Option<PreKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kyber_pre_key: Option<SignedPreKey>,
}

impl Client {
    /// `POST /prekeys/<regId>` (200 `prekeys_stored`): 1–100 one-time EC prekeys.
    pub async fn upload_prekeys(&self, reg_id: u32, keys: &[PreKey]) -> Result<Stored, Error> {
        let body = json!({ "preKeys": keys });
        let path = format!("/prekeys/{reg_id}");
        self.call(Method::POST, &path, Some(&body), StatusCode::OK)
            .await
    }

    /// `POST /kyberprekeys/<regId>` (200 `kyber_prekeys_stored`).
    pub async fn upload_kyber(&self, reg_id: u32, upload: &KyberUpload) -> Result<Stored, Error> {
        let path = format!("/kyberprekeys/{reg_id}");
        self.call(Method::POST, &path, Some(upload), StatusCode::OK)
            .await
    }

    /// `POST /signedprekey/<regId>` (200 `signed_prekey_stored`): replaces the signed prekey.
    pub async fn upload_signed_prekey(
        &self,
        reg_id: u32,
        key: &SignedPreKey,
    ) -> Result<Stored, Error> {
        let path = format!("/signedprekey/{reg_id}");
        self.call(Method::POST, &path, Some(key), StatusCode::OK)
            .await
    }

    /// `GET /prekeys/<regId>` (200).
    pub async fn stock(&self, reg_id: u32) -> Result<Counts, Error> {
        let path = format!("/prekeys/{reg_id}");
        self.call(Method::GET, &path, None::<&()>, StatusCode::OK)
            .await
    }

    /// `GET /prekeybundle/<username>/<regId>` (200): `reg_id` is the caller's own; takes one
    /// one-time EC and one one-time Kyber prekey from the stock.
    pub async fn bundle(&self, username: &str, reg_id: u32) -> Result<Bundle, Error> {
        let name = percent_encoding::utf8_percent_encode(username, PATH_SEGMENT);
        let path = format!("/prekeybundle/{name}/{reg_id}");
        self.call(Method::GET, &path, None::<&()>, StatusCode::OK)
            .await
    }

    /// `GET /v2/prekeybundle/<username>/<regId>` (200): one bundle per device of `username`
    /// (without the calling device when it asks for its own account), each taking one-time keys.
    pub async fn bundles(&self, username: &str, reg_id: u32) -> Result<Bundles, Error> {
        let name = percent_encoding::utf8_percent_encode(username, PATH_SEGMENT);
        let path = format!("/v2/prekeybundle/{name}/{reg_id}");
        self.call(Method::GET, &path, None::<&()>, StatusCode::OK)
            .await
    }
}

/// What is escaped in a path segment: everything but the characters a username may hold.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'@')
    .remove(b'.')
    .remove(b'+')
    .remove(b'-')
    .remove(b'_');

impl PreKey {
    /// A fresh one-time EC prekey (the private half is thrown away: for demos, load and tests).
    pub fn generate(key_id: u32) -> PreKey {
        PreKey {
            key_id,
            public_key: KeyPair::generate().public.to_vec(),
        }
    }
}

impl SignedPreKey {
    /// A fresh EC signed prekey, signed by `identity` (private half thrown away).
    pub fn generate_ec(identity: &KeyPair, key_id: u32) -> SignedPreKey {
        SignedPreKey::signed(identity, key_id, KeyPair::generate().public.to_vec())
    }

    /// A stand-in Kyber prekey: the type byte and random bytes of the right size, signed by
    /// `identity`. The server checks only size, type byte and signature; a real client uploads a
    /// real Kyber key.
    pub fn random_kyber(identity: &KeyPair, key_id: u32) -> SignedPreKey {
        let mut key = vec![KYBER_KEY_TYPE];
        key.extend((1..KYBER_KEY_LEN).map(|_| rand::random::<u8>()));
        SignedPreKey::signed(identity, key_id, key)
    }

    /// `public_key` with its XEdDSA signature by `identity`.
    pub fn signed(identity: &KeyPair, key_id: u32, public_key: Vec<u8>) -> SignedPreKey {
        SignedPreKey {
            key_id,
            signature: identity.sign(&public_key).to_vec(),
            public_key,
        }
    }
}
