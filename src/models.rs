//! Domain records (what storage keeps, raw bytes; `serde_bytes` makes bincode copy byte strings
//! in one go rather than element by element) and the wire shapes the API answers with
//! (camelCase, base64). Request bodies are parsed into typed values in `requests`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::b64;

/// An account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    /// As registered; matched case-insensitively everywhere.
    pub username: String,
    /// Empty when none was given.
    pub email: String,
    /// `pbkdf2_sha256$<iterations>$<salt>$<hash>`.
    pub password_hash: String,
    /// Bumped by password change and reset: tokens carrying an older version are dead.
    pub token_version: u32,
}

/// A one-time EC prekey.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreKey {
    pub key_id: u32,
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
}

/// A signed prekey: the EC signed prekey, or a (one-time or last-resort) Kyber prekey.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SignedPreKey {
    pub key_id: u32,
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// One device of one account: what keys, a message queue and a live connection belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRef {
    pub user: u64,
    /// The id in the device's address (`<username>.<id>`).
    pub device: u32,
}

impl std::fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} of user {}", self.device, self.user)
    }
}

/// A device of an account: the primary (created by `POST /device`) or a linked one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    /// `<username>.<deviceId>`.
    pub address: String,
    pub registration_id: u32,
    #[serde(with = "serde_bytes")]
    pub identity_key: Vec<u8>,
    pub signed_prekey: SignedPreKey,
    pub last_resort_kyber: Option<SignedPreKey>,
}

impl Device {
    /// The device id, from the address (validated when the device was stored).
    pub fn id(&self) -> u32 {
        address_device_id(&self.address).unwrap_or(0)
    }

    /// The device of `user` this is.
    pub fn of(&self, user: u64) -> DeviceRef {
        DeviceRef {
            user,
            device: self.id(),
        }
    }
}

/// Lowest and highest id a linked device gets (the primary's is the one in its address).
pub const LINKED_IDS: std::ops::RangeInclusive<u32> = 2..=127;

/// The device id at the end of a stored address (`<username>.<id>`).
pub fn address_device_id(address: &str) -> Option<u32> {
    address.rsplit_once('.')?.1.parse().ok()
}

/// One ciphertext of a send to several devices of one account.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub device: u32,
    /// The registrationId the sender believes the device has.
    pub registration_id: u32,
    pub message: Message,
}

/// A queued end-to-end-encrypted message; `content` is opaque to the server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub id: u64,
    pub sender_address: String,
    pub sender_registration_id: u32,
    pub content: String,
    pub recipient_address: String,
    pub timestamp: u64,
}

/// What a prekey-bundle fetch took from the stock.
#[derive(Debug, Default)]
pub struct Popped {
    pub prekey: Option<PreKey>,
    pub kyber: Option<SignedPreKey>,
}

// ---- wire shapes ----

#[derive(Serialize)]
pub struct UserOut<'a> {
    pub email: &'a str,
    pub username: &'a str,
    pub id: u64,
}

impl<'a> From<&'a User> for UserOut<'a> {
    fn from(u: &'a User) -> Self {
        UserOut {
            email: &u.email,
            username: &u.username,
            id: u.id,
        }
    }
}

#[derive(Serialize)]
pub struct TokenOut {
    pub token: String,
}

#[derive(Serialize)]
pub struct CodeOut {
    pub code: &'static str,
    pub message: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreKeyOut {
    pub key_id: u32,
    pub public_key: String,
}

impl From<&PreKey> for PreKeyOut {
    fn from(k: &PreKey) -> Self {
        PreKeyOut {
            key_id: k.key_id,
            public_key: b64::encode(&k.public_key),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPreKeyOut {
    pub key_id: u32,
    pub public_key: String,
    pub signature: String,
}

impl From<&SignedPreKey> for SignedPreKeyOut {
    fn from(k: &SignedPreKey) -> Self {
        SignedPreKeyOut {
            key_id: k.key_id,
            public_key: b64::encode(&k.public_key),
            signature: b64::encode(&k.signature),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOut {
    pub address: String,
    pub registration_id: u32,
    pub identity_key: String,
    pub signed_pre_key_id: u32,
    pub pre_key_count: u32,
    pub kyber_pre_key_count: u32,
    pub has_last_resort_kyber_pre_key: bool,
}

/// One entry of `GET /v2/devices`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedDeviceOut {
    pub device_id: u32,
    #[serde(flatten)]
    pub device: DeviceOut,
}

/// `201` of `POST /v2/devices`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedOut<'a> {
    pub device_id: u32,
    pub address: &'a str,
    /// A token bound to the new device: it acts as that device only and dies with it.
    pub token: String,
}

/// `GET /v2/prekeybundle`: one bundle per device of the account.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundlesOut {
    pub identity_key: String,
    pub devices: Vec<DeviceBundleOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceBundleOut {
    pub device_id: u32,
    pub registration_id: u32,
    pub signed_pre_key: SignedPreKeyOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_key: Option<PreKeyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kyber_pre_key: Option<SignedPreKeyOut>,
}

/// `201` of `POST /v2/messages`.
#[derive(Serialize)]
pub struct SentAllOut {
    pub timestamp: u64,
    pub messages: Vec<SentToOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SentToOut {
    pub device_id: u32,
    pub id: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreKeyCountOut {
    pub pre_key_count: u32,
    pub kyber_pre_key_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleOut<'a> {
    pub address: &'a str,
    pub identity_key: String,
    pub registration_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_key: Option<PreKeyOut>,
    pub signed_pre_key: SignedPreKeyOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kyber_pre_key: Option<SignedPreKeyOut>,
}

/// The 201 shape of a message (note `senderRegistrationID`, as in the original).
#[derive(Serialize)]
pub struct MessageOut<'a> {
    pub id: u64,
    #[serde(rename = "senderAddress")]
    pub sender_address: &'a str,
    #[serde(rename = "senderRegistrationID")]
    pub sender_registration_id: u32,
    pub content: &'a str,
    #[serde(rename = "recipientAddress")]
    pub recipient_address: &'a str,
    pub timestamp: u64,
}

impl<'a> From<&'a Message> for MessageOut<'a> {
    fn from(m: &'a Message) -> Self {
        MessageOut {
            id: m.id,
            sender_address: &m.sender_address,
            sender_registration_id: m.sender_registration_id,
            content: &m.content,
            recipient_address: &m.recipient_address,
            timestamp: m.timestamp,
        }
    }
}

/// A device as its own requests need it: what stays the same for as long as it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `<username>.<deviceId>`.
    pub address: String,
    pub registration_id: u32,
    pub identity_key: Vec<u8>,
    /// See `Storage::device_stamp`.
    pub stamp: u64,
}

impl Member {
    pub fn id(&self) -> u32 {
        address_device_id(&self.address).unwrap_or(0)
    }

    pub fn of(&self, user: u64) -> DeviceRef {
        DeviceRef {
            user,
            device: self.id(),
        }
    }
}

/// An account as read at one moment: the user and its devices, the primary first.
#[derive(Debug)]
pub struct Principal {
    pub user: User,
    pub devices: Vec<Arc<Member>>,
}

impl Principal {
    pub fn device(&self, id: u32) -> Option<&Arc<Member>> {
        self.devices.iter().find(|d| d.id() == id)
    }

    pub fn by_registration_id(&self, reg_id: u64) -> Option<&Arc<Member>> {
        self.devices
            .iter()
            .find(|d| u64::from(d.registration_id) == reg_id)
    }
}
