//! Sending, fetching and deleting queued messages.

use warp::http::StatusCode;

use super::{detached, json, Answer};
use crate::app::App;
use crate::auth::{now_millis, Caller};
use crate::body::Body;
use crate::error::ApiError;
use crate::models::{DeviceRef, Message, MessageOut, Outgoing, SentAllOut, SentToOut};
use crate::requests::{self, Send, SendAll};
use crate::storage::DeleteOutcome;

/// POST /messages/<regId>: to the recipient's primary device.
pub async fn send(reg_id: u64, app: App, user: Caller, body: Body) -> Answer {
    let sender = app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
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
    // The live push follows the commit even if the sender hangs up meanwhile.
    let message = detached(async move {
        let message = app
            .storage
            .enqueue(to, message, app.config.max_queued_messages)
            .await
            .map_err(recipient_error)?;
        app.hub.deliver(to, message.id);
        Ok(message)
    })
    .await?;
    let text = serde_json::to_string(&MessageOut::from(&message))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(created_json(text))
}

/// A recipient without a device is the recipient's `no_device`, not the caller's.
fn recipient_error(e: crate::storage::StoreError) -> ApiError {
    match e {
        crate::storage::StoreError::NoDevice => ApiError::RecipientNoDevice,
        e => e.into(),
    }
}

/// POST /v2/messages/<regId>: one ciphertext per device of the recipient, all or none.
pub async fn send_all(reg_id: u64, app: App, user: Caller, body: Body) -> Answer {
    let sender = app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
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
    // The live pushes follow the commit even if the sender hangs up meanwhile.
    let messages = detached(async move {
        let queued = app
            .storage
            .enqueue_all(recipient.id, skip, outgoing, app.config.max_queued_messages)
            .await
            .map_err(recipient_error)?;
        let mut messages = Vec::with_capacity(queued.len());
        for m in &queued {
            let device = crate::models::address_device_id(&m.recipient_address).unwrap_or_default();
            app.hub.deliver(
                DeviceRef {
                    user: recipient.id,
                    device,
                },
                m.id,
            );
            messages.push(SentToOut {
                device_id: device,
                id: m.id,
            });
        }
        Ok(messages)
    })
    .await?;
    json(
        StatusCode::CREATED,
        &SentAllOut {
            timestamp,
            messages,
        },
    )
}

fn created_json(text: String) -> warp::reply::Response {
    let mut res = warp::reply::Response::new(text.into());
    *res.status_mut() = StatusCode::CREATED;
    res.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    res
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
