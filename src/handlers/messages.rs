//! Sending, fetching and deleting queued messages.

use warp::http::{HeaderValue, StatusCode};

use super::{detached, json, Answer};
use crate::app::App;
use crate::auth::{now_millis, Caller};
use crate::body::Body;
use crate::error::ApiError;
use crate::idempotency::{self, Begun, Keyed};
use crate::models::{
    address_device_id, DeviceRef, Message, MessageOut, Outgoing, SentAllOut, SentToOut,
};
use crate::requests::{self, Send, SendAll};
use crate::storage::idempotency::{AnswerFn, Remember, Sent, ROUTE_SEND, ROUTE_SEND_ALL};
use crate::storage::DeleteOutcome;

/// POST /messages/<regId>: to the recipient's primary device.
pub async fn send(
    reg_id: u64,
    app: App,
    user: Caller,
    key: Option<HeaderValue>,
    body: Body,
) -> Answer {
    let sender = app.own_device(&user, reg_id).await?;
    let key = idempotency::parse(key.as_ref())?;
    let bytes = body.bytes(app.max_body()).await?;
    let keyed = match key {
        Some(key) => {
            match idempotency::begin(&app, sender.of(user.id), ROUTE_SEND, key, &bytes).await? {
                Begun::Answered(answer) => return Ok(answer),
                Begun::Fresh(keyed) => Some(keyed),
            }
        }
        None => None,
    };
    let value = serde_json::from_slice(&bytes).map_err(|_| ApiError::MalformedJson)?;
    let req = Send::parse(&value, app.config.max_message_bytes)?;
    let recipient = app
        .storage
        .user_by_name(req.recipient)
        .await?
        .ok_or(ApiError::NoRecipient)?;
    let device = app
        .storage
        .device(recipient.id)
        .await?
        .ok_or(ApiError::RecipientNoDevice)?;
    if u64::from(device.registration_id) != req.registration_id {
        return Err(ApiError::RecipientIdentityChanged);
    }
    let to = device.of(recipient.id);
    app.limits.send(user.id)?;
    let message = Message {
        id: 0,
        sender_address: sender.address,
        sender_registration_id: sender.registration_id,
        content: req.message.to_string(),
        recipient_address: device.address,
        timestamp: now_millis(),
    };
    // The live push follows the commit even if the sender hangs up meanwhile; a keyed send
    // stays in flight until then.
    detached(async move {
        let cap = app.config.max_queued_messages;
        let (message, (status, body)) = match keyed {
            None => {
                let m = app.storage.enqueue(to, message, cap).await;
                let m = m.map_err(recipient_error)?;
                let answer = sent_one(std::slice::from_ref(&m));
                (m, answer)
            }
            Some(keyed) => {
                let remember = remember(&keyed, &sent_one);
                let sent = app.storage.enqueue_once(to, message, cap, &remember).await;
                match sent.map_err(recipient_error)? {
                    Sent::Queued(m, r) => (m, (r.status, r.body)),
                    Sent::Answered(found) => return idempotency::replay(&found, &keyed.body_hash),
                }
            }
        };
        app.hub.deliver(to, message.id);
        Ok(idempotency::response(status, body))
    })
    .await
}

/// The answer to a send of one message: 201 and the message as queued.
fn sent_one(queued: &[Message]) -> (u16, Vec<u8>) {
    let body = queued
        .first()
        .and_then(|m| serde_json::to_vec(&MessageOut::from(m)).ok())
        .unwrap_or_default();
    (StatusCode::CREATED.as_u16(), body)
}

/// What a keyed send stores, with the answer it makes from its messages.
fn remember<'a>(keyed: &'a Keyed, answer: AnswerFn<'a>) -> Remember<'a> {
    Remember {
        key: keyed.key(),
        body_hash: keyed.body_hash,
        created_ms: keyed.created_ms,
        answer,
    }
}

/// A recipient without a device is the recipient's `no_device`, not the caller's.
fn recipient_error(e: crate::storage::StoreError) -> ApiError {
    match e {
        crate::storage::StoreError::NoDevice => ApiError::RecipientNoDevice,
        e => e.into(),
    }
}

/// POST /v2/messages/<regId>: one ciphertext per device of the recipient, all or none.
pub async fn send_all(
    reg_id: u64,
    app: App,
    user: Caller,
    key: Option<HeaderValue>,
    body: Body,
) -> Answer {
    let sender = app.own_device(&user, reg_id).await?;
    let key = idempotency::parse(key.as_ref())?;
    let bytes = body.bytes(app.max_body()).await?;
    let keyed = match key {
        Some(key) => {
            match idempotency::begin(&app, sender.of(user.id), ROUTE_SEND_ALL, key, &bytes).await? {
                Begun::Answered(answer) => return Ok(answer),
                Begun::Fresh(keyed) => Some(keyed),
            }
        }
        None => None,
    };
    let value = serde_json::from_slice(&bytes).map_err(|_| ApiError::MalformedJson)?;
    let req = SendAll::parse(&value, app.config.max_message_bytes)?;
    let recipient = app
        .storage
        .user_by_name(req.recipient)
        .await?
        .ok_or(ApiError::NoRecipient)?;
    app.limits.send(user.id)?;
    // Writing to one's own account (sync copies) goes to the other devices.
    let skip = (recipient.id == user.id).then(|| sender.id());
    let timestamp = now_millis();
    let outgoing = req
        .messages
        .into_iter()
        .map(|m| Outgoing {
            device: m.device_id,
            registration_id: m.registration_id,
            message: Message {
                id: 0,
                sender_address: sender.address.clone(),
                sender_registration_id: sender.registration_id,
                content: m.content,
                recipient_address: String::new(),
                timestamp,
            },
        })
        .collect();
    // The live pushes follow the commit even if the sender hangs up meanwhile; a keyed send
    // stays in flight until then.
    detached(async move {
        let cap = app.config.max_queued_messages;
        let answer = |queued: &[Message]| sent_all(timestamp, queued);
        let (queued, (status, body)) = match keyed {
            None => {
                let q = app
                    .storage
                    .enqueue_all(recipient.id, skip, outgoing, cap)
                    .await;
                let q = q.map_err(recipient_error)?;
                let made = answer(&q);
                (q, made)
            }
            Some(keyed) => {
                let remember = remember(&keyed, &answer);
                let sent = app
                    .storage
                    .enqueue_all_once(recipient.id, skip, outgoing, cap, &remember)
                    .await;
                match sent.map_err(recipient_error)? {
                    Sent::Queued(q, r) => (q, (r.status, r.body)),
                    Sent::Answered(found) => return idempotency::replay(&found, &keyed.body_hash),
                }
            }
        };
        for m in &queued {
            let device = address_device_id(&m.recipient_address).unwrap_or_default();
            let to = DeviceRef {
                user: recipient.id,
                device,
            };
            app.hub.deliver(to, m.id);
        }
        Ok(idempotency::response(status, body))
    })
    .await
}

/// The answer to a send to every device: 201, the timestamp, and each device's message id.
fn sent_all(timestamp: u64, queued: &[Message]) -> (u16, Vec<u8>) {
    let messages = queued
        .iter()
        .map(|m| SentToOut {
            device_id: address_device_id(&m.recipient_address).unwrap_or_default(),
            id: m.id,
        })
        .collect();
    let out = SentAllOut {
        timestamp,
        messages,
    };
    let body = serde_json::to_vec(&out).unwrap_or_default();
    (StatusCode::CREATED.as_u16(), body)
}

/// Stored bytes one GET /messages page may hold (at least one message): ten connections that
/// ask for a page and never read it must not pin gigabytes.
pub const PAGE_BYTES: usize = 1 << 20;

/// GET /messages/<regId>
pub async fn list(reg_id: u64, app: App, user: Caller, query: Option<String>) -> Answer {
    let device = app.own_device(&user, reg_id).await?.of(user.id);
    let limit = requests::limit(query.as_deref())?;
    let messages = app
        .storage
        .messages_page(device, 0, limit, PAGE_BYTES)
        .await?;
    let out: Vec<MessageOut> = messages.iter().map(MessageOut::from).collect();
    json(StatusCode::OK, &out)
}

/// DELETE /messages/<regId>
pub async fn delete(reg_id: u64, app: App, user: Caller, body: Body) -> Answer {
    let device = app.own_device(&user, reg_id).await?.of(user.id);
    let value = body.json(app.max_body()).await?;
    let ids = requests::message_ids(&value)?;
    let outcomes = app.storage.delete_messages(device, &ids).await?;
    let out: Vec<&str> = outcomes.iter().map(|o| outcome_text(*o)).collect();
    json(StatusCode::OK, &out)
}

pub fn outcome_text(outcome: DeleteOutcome) -> &'static str {
    match outcome {
        DeleteOutcome::Deleted => "success",
        DeleteOutcome::NotOwner => "not_message_owner",
        DeleteOutcome::NotFound => "non-existant_message",
    }
}
