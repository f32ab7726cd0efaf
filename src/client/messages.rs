//! `/messages/<regId>`: sending, reading and deleting queued messages.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Client, Error};

/// A queued message, as `POST /messages` answers and `GET /messages` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub id: u64,
    #[serde(rename = "senderAddress")]
    pub sender_address: String,
    /// `senderRegistrationID` on the wire, as in the original API.
    #[serde(rename = "senderRegistrationID")]
    pub sender_registration_id: u32,
    /// The sender's `message`, verbatim.
    pub content: String,
    #[serde(rename = "recipientAddress")]
    pub recipient_address: String,
    /// Milliseconds since the epoch.
    pub timestamp: u64,
}

/// What `DELETE /messages/<regId>` says about one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Deleted {
    #[serde(rename = "success")]
    Success,
    #[serde(rename = "not_message_owner")]
    NotMessageOwner,
    /// Spelled `non-existant_message` on the wire, as in the original.
    #[serde(rename = "non-existant_message")]
    NonExistent,
}

/// One ciphertext of `POST /v2/messages/<regId>`, for one device of the recipient.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMessage {
    pub device_id: u32,
    /// That device's registrationId, as the sender knows it (410 `stale_devices` if changed).
    pub registration_id: u32,
    /// Opaque to the server.
    pub content: String,
}

/// `201` of `POST /v2/messages/<regId>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentAll {
    pub timestamp: u64,
    pub messages: Vec<SentTo>,
}

/// The id a message got in one device's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentTo {
    pub device_id: u32,
    pub id: u64,
}

impl Client {
    /// `POST /v2/messages/<regId>` (201): one ciphertext per device of `recipient`, queued all
    /// or none. The device list must match the recipient's (409 `mismatched_devices`, 410
    /// `stale_devices`; see [`Refusal::devices`](super::Refusal::devices)).
    pub async fn send_all(
        &self,
        reg_id: u32,
        recipient: &str,
        messages: &[DeviceMessage],
    ) -> Result<SentAll, Error> {
        self.send_all_keyed(reg_id, recipient, messages, None).await
    }

    /// `send_all` with an `Idempotency-Key` (1 to 64 printable ASCII characters): sent again
    /// with the same key and messages, it is answered as the first time and queued once.
    pub async fn send_all_keyed(
        &self,
        reg_id: u32,
        recipient: &str,
        messages: &[DeviceMessage],
        key: Option<&str>,
    ) -> Result<SentAll, Error> {
        let body = json!({"recipient": recipient, "messages": messages});
        let path = format!("/v2/messages/{reg_id}");
        self.call_keyed((Method::POST, &path), &body, StatusCode::CREATED, key)
            .await
    }

    /// `POST /messages/<regId>` (201): `message` is the JSON text of an object whose
    /// `registrationId` is the recipient device's (see `docs/API.md`, the message envelope).
    pub async fn send(
        &self,
        reg_id: u32,
        recipient: &str,
        message: &str,
    ) -> Result<QueuedMessage, Error> {
        self.send_keyed(reg_id, recipient, message, None).await
    }

    /// `send` with an `Idempotency-Key` (1 to 64 printable ASCII characters): sent again with
    /// the same key and message, it is answered as the first time and queued once.
    pub async fn send_keyed(
        &self,
        reg_id: u32,
        recipient: &str,
        message: &str,
        key: Option<&str>,
    ) -> Result<QueuedMessage, Error> {
        let body = json!({"recipient": recipient, "message": message});
        let path = format!("/messages/{reg_id}");
        self.call_keyed((Method::POST, &path), &body, StatusCode::CREATED, key)
            .await
    }

    /// `GET /messages/<regId>[?limit=N]` (200): the queue, oldest first; reading deletes nothing.
    pub async fn fetch(
        &self,
        reg_id: u32,
        limit: Option<u32>,
    ) -> Result<Vec<QueuedMessage>, Error> {
        let path = match limit {
            Some(n) => format!("/messages/{reg_id}?limit={n}"),
            None => format!("/messages/{reg_id}"),
        };
        self.call(Method::GET, &path, None::<&()>, StatusCode::OK)
            .await
    }

    /// `DELETE /messages/<regId>` (200): one outcome per id, in the order given.
    pub async fn delete_messages(&self, reg_id: u32, ids: &[u64]) -> Result<Vec<Deleted>, Error> {
        let path = format!("/messages/{reg_id}");
        self.call(Method::DELETE, &path, Some(&ids), StatusCode::OK)
            .await
    }
}
