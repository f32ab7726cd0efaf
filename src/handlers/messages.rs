//! Sending, fetching and deleting queued messages.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

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
    let started = idempotency::begin(
        app.sends(),
        sender.of(user.id),
        ROUTE_SEND,
        key.as_ref(),
        body,
    );
    let (value, keyed) = match started.await? {
        Begun::Answered(answer) => return Ok(answer),
        Begun::Run(value, keyed) => (value, keyed),
    };
    let req = Send::parse(&value, app.config.max_message_bytes)?;
    let (recipient, device) = app
        .storage
        .recipient(req.recipient)
        .await?
        .ok_or(ApiError::NoRecipient)?;
    let device = device.ok_or(ApiError::RecipientNoDevice)?;
    if u64::from(device.registration_id) != req.registration_id {
        return Err(ApiError::RecipientIdentityChanged);
    }
    let to = device.of(recipient.id);
    app.limits.send(user.id)?;
    let message = Message {
        id: 0,
        sender_address: sender.address.clone(),
        sender_registration_id: sender.registration_id,
        content: req.message.to_string(),
        recipient_address: device.address,
        timestamp: now_millis(),
    };
    // The live push follows the commit even if the sender hangs up meanwhile; a keyed send
    // stays in flight until then.
    detached(async move {
        let (queued, answer) = queue_one(&app, to, message, keyed).await?;
        if let Some(m) = queued {
            app.hub.deliver(to, m.id);
        }
        Ok(answer)
    })
    .await
}

/// Queues one message, under its key if it has one: the message if it was queued now (not
/// for a repeat answered from its record), and the answer.
async fn queue_one(
    app: &App,
    to: DeviceRef,
    message: Message,
    keyed: Option<Keyed>,
) -> Result<(Option<Message>, Response), ApiError> {
    let cap = app.config.max_queued_messages;
    let Some(keyed) = keyed else {
        let m = app.storage.enqueue(to, message, cap).await;
        let m = m.map_err(recipient_error)?;
        let (status, body) = sent_one(std::slice::from_ref(&m));
        return Ok((Some(m), idempotency::response(status, body)));
    };
    let remember = remember(&keyed, &sent_one);
    let sent = app.storage.enqueue_once(to, message, cap, &remember).await;
    match sent.map_err(recipient_error)? {
        Sent::Queued(m, r) => Ok((Some(m), idempotency::response(r.status, r.body))),
        Sent::Answered(found) => Ok((None, idempotency::replay(&found, &keyed.body_hash)?)),
    }
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
    let started = idempotency::begin(
        app.sends(),
        sender.of(user.id),
        ROUTE_SEND_ALL,
        key.as_ref(),
        body,
    );
    let (value, keyed) = match started.await? {
        Begun::Answered(answer) => return Ok(answer),
        Begun::Run(value, keyed) => (value, keyed),
    };
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
    let to = Fanout {
        recipient: recipient.id,
        skip,
        timestamp,
    };
    // The live pushes follow the commit even if the sender hangs up meanwhile; a keyed send
    // stays in flight until then.
    detached(async move {
        let (queued, answer) = queue_all(&app, &to, outgoing, keyed).await?;
        for m in &queued {
            let device = address_device_id(&m.recipient_address).unwrap_or_default();
            let device = DeviceRef {
                user: to.recipient,
                device,
            };
            app.hub.deliver(device, m.id);
        }
        Ok(answer)
    })
    .await
}

/// Where a send to every device goes, and its timestamp (in its answer).
struct Fanout {
    recipient: u64,
    skip: Option<u32>,
    timestamp: u64,
}

/// Queues a send to every device, under its key if it has one: the messages queued now (none
/// for a repeat answered from its record), and the answer.
async fn queue_all(
    app: &App,
    to: &Fanout,
    outgoing: Vec<Outgoing>,
    keyed: Option<Keyed>,
) -> Result<(Vec<Message>, Response), ApiError> {
    let (cap, storage) = (app.config.max_queued_messages, &app.storage);
    let answer = |queued: &[Message]| sent_all(to.timestamp, queued);
    let Some(keyed) = keyed else {
        let q = storage
            .enqueue_all(to.recipient, to.skip, outgoing, cap)
            .await;
        let q = q.map_err(recipient_error)?;
        let (status, body) = answer(&q);
        return Ok((q, idempotency::response(status, body)));
    };
    let remember = remember(&keyed, &answer);
    let sent = storage
        .enqueue_all_once(to.recipient, to.skip, outgoing, cap, &remember)
        .await;
    match sent.map_err(recipient_error)? {
        Sent::Queued(q, r) => Ok((q, idempotency::response(r.status, r.body))),
        Sent::Answered(found) => Ok((Vec::new(), idempotency::replay(&found, &keyed.body_hash)?)),
    }
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
