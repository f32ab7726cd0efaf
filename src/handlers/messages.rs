//! Sending, fetching and deleting queued messages.

use warp::http::StatusCode;

use super::{json, Answer};
use crate::app::App;
use crate::auth::now_millis;
use crate::body::Body;
use crate::error::ApiError;
use crate::models::{Message, MessageOut, User};
use crate::requests::{self, Send};
use crate::storage::DeleteOutcome;

/// POST /messages/<regId>
pub async fn send(reg_id: u64, app: App, user: User, body: Body) -> Answer {
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
    app.limits.send(user.id)?;
    let message = Message {
        id: 0,
        sender_address: sender.address,
        sender_registration_id: sender.registration_id,
        content: req.message.to_string(),
        recipient_address: device.address,
        timestamp: now_millis(),
    };
    let message = app
        .storage
        .enqueue(recipient.id, message, app.config.max_queued_messages)
        .await
        .map_err(|e| match e {
            crate::storage::StoreError::NoDevice => ApiError::RecipientNoDevice,
            e => e.into(),
        })?;
    let text = serde_json::to_string(&MessageOut::from(&message))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    app.hub.deliver(recipient.id, message.id);
    Ok(created_json(text))
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
pub async fn list(reg_id: u64, app: App, user: User, query: Option<String>) -> Answer {
    app.own_device(&user, reg_id).await?;
    let limit = requests::limit(query.as_deref())?;
    let messages = app
        .storage
        .messages_page(user.id, 0, limit, PAGE_BYTES)
        .await?;
    let out: Vec<MessageOut> = messages.iter().map(MessageOut::from).collect();
    json(StatusCode::OK, &out)
}

/// DELETE /messages/<regId>
pub async fn delete(reg_id: u64, app: App, user: User, body: Body) -> Answer {
    app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
    let ids = requests::message_ids(&value)?;
    let outcomes = app.storage.delete_messages(user.id, &ids).await?;
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
