//! `/device/`: the caller's one device.

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
}
