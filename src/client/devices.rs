//! `/device/`: the caller's primary device; `/v2/devices`: the devices linked to it.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{base64_bytes, Client, Error, PreKey, SignedPreKey, Stored};

/// The body of `POST /device/`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewDevice {
    /// `<username>.<deviceId>`.
    pub address: String,
    #[serde(with = "base64_bytes")]
    pub identity_key: Vec<u8>,
    pub registration_id: u32,
    /// Required by the server, may be empty.
    pub pre_keys: Vec<PreKey>,
    pub signed_pre_key: SignedPreKey,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kyber_pre_keys: Vec<SignedPreKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_resort_kyber_pre_key: Option<SignedPreKey>,
}

/// The body of `POST /v2/devices`: a device linked to the account, holding its identity key.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkDevice {
    /// The account's identity key (the primary's).
    #[serde(with = "base64_bytes")]
    pub identity_key: Vec<u8>,
    /// Unique within the account.
    pub registration_id: u32,
    pub pre_keys: Vec<PreKey>,
    pub signed_pre_key: SignedPreKey,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kyber_pre_keys: Vec<SignedPreKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_resort_kyber_pre_key: Option<SignedPreKey>,
}

/// `201` of `POST /v2/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linked {
    pub device_id: u32,
    /// `<username>.<deviceId>`.
    pub address: String,
    /// A token bound to the new device: what the device itself uses from then on.
    pub token: String,
}

/// One entry of `GET /v2/devices`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedDevice {
    pub device_id: u32,
    #[serde(flatten)]
    pub info: DeviceInfo,
}

/// `GET /device/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    pub address: String,
    pub registration_id: u32,
    #[serde(with = "base64_bytes")]
    pub identity_key: Vec<u8>,
    pub signed_pre_key_id: u32,
    pub pre_key_count: u32,
    pub kyber_pre_key_count: u32,
    pub has_last_resort_kyber_pre_key: bool,
}

impl Client {
    /// `POST /device/` (201 `device_created`).
    pub async fn create_device(&self, device: &NewDevice) -> Result<Stored, Error> {
        self.call(Method::POST, "/device/", Some(device), StatusCode::CREATED)
            .await
    }

    /// `GET /device/` (200).
    pub async fn device(&self) -> Result<DeviceInfo, Error> {
        self.call(Method::GET, "/device/", None::<&()>, StatusCode::OK)
            .await
    }

    /// `DELETE /device/` (204): the device, its keys and its queue.
    pub async fn delete_device(&self) -> Result<(), Error> {
        let path = "/device/";
        self.call_empty(Method::DELETE, path, None::<&()>, StatusCode::NO_CONTENT)
            .await
    }

    /// `POST /v2/devices` (201): links a new device to the account; the server picks its id.
    pub async fn link_device(&self, device: &LinkDevice) -> Result<Linked, Error> {
        self.call(
            Method::POST,
            "/v2/devices",
            Some(device),
            StatusCode::CREATED,
        )
        .await
    }

    /// `GET /v2/devices` (200): every device of the account, the primary first.
    pub async fn devices(&self) -> Result<Vec<ListedDevice>, Error> {
        self.call(Method::GET, "/v2/devices", None::<&()>, StatusCode::OK)
            .await
    }

    /// `DELETE /v2/devices/<deviceId>` (204): unlinks a linked device (never the primary).
    pub async fn unlink_device(&self, device_id: u32) -> Result<(), Error> {
        let path = format!("/v2/devices/{device_id}");
        self.call_empty(Method::DELETE, &path, None::<&()>, StatusCode::NO_CONTENT)
            .await
    }
}
