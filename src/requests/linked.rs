//! `POST /v2/messages`: one ciphertext per device of the recipient.

use std::collections::HashSet;

use serde_json::Value;

use super::MAX_REGISTRATION_ID;
use crate::error::{ApiError, FieldError, FieldErrors};
use crate::models::LINKED_IDS;
use crate::validate::{self, Fields};

/// Most ciphertexts in one send: one per device id an account can have.
pub const MAX_DEVICE_MESSAGES: usize = *LINKED_IDS.end() as usize;

pub struct DeviceMessage {
    pub device_id: u32,
    pub registration_id: u32,
    pub content: String,
}

pub struct SendAll<'a> {
    pub recipient: &'a str,
    pub messages: Vec<DeviceMessage>,
}

impl<'a> SendAll<'a> {
    pub fn parse(value: &'a Value, max_message_bytes: usize) -> Result<SendAll<'a>, ApiError> {
        let mut f = Fields::new(validate::object(value)?);
        let recipient = f.string("recipient", true);
        let messages = match f.get("messages") {
            None => {
                f.fail("messages", validate::REQUIRED);
                Vec::new()
            }
            Some(Value::Array(items)) if items.is_empty() => {
                f.fail("messages", "Ensure this list has at least 1 item.");
                Vec::new()
            }
            Some(Value::Array(items)) if items.len() > MAX_DEVICE_MESSAGES => {
                f.fail(
                    "messages",
                    format!("Ensure this list has no more than {MAX_DEVICE_MESSAGES} items."),
                );
                Vec::new()
            }
            Some(Value::Array(items)) => device_messages(&mut f, items, max_message_bytes),
            Some(_) => {
                f.fail("messages", "Expected a list of items.");
                Vec::new()
            }
        };
        f.finish()?;
        Ok(SendAll {
            recipient: recipient.unwrap_or_default(),
            messages,
        })
    }
}

/// The items of `messages`, each device at most once; errors nested by index.
fn device_messages(f: &mut Fields, items: &[Value], max_bytes: usize) -> Vec<DeviceMessage> {
    let mut out = Vec::with_capacity(items.len());
    let mut errors = FieldErrors::new();
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        match device_message(item, max_bytes) {
            Ok(m) if !seen.insert(m.device_id) => {
                errors.insert(
                    i.to_string(),
                    FieldError::Nested(validate::messages(
                        "deviceId",
                        "Duplicate deviceId in this send.",
                    )),
                );
            }
            Ok(m) => out.push(m),
            Err(e) => {
                errors.insert(i.to_string(), FieldError::Nested(e));
            }
        }
    }
    if !errors.is_empty() {
        f.nest("messages", errors);
    }
    out
}

fn device_message(value: &Value, max_bytes: usize) -> Result<DeviceMessage, FieldErrors> {
    let mut f = Fields::of(value)?;
    let device_id = f.int("deviceId", u64::from(*LINKED_IDS.end()));
    let registration_id = f.int("registrationId", MAX_REGISTRATION_ID);
    let content = f.string("content", true);
    if content.is_some_and(|c| c.len() > max_bytes) {
        f.fail(
            "content",
            format!("Ensure this field has no more than {max_bytes} bytes."),
        );
    }
    f.finish_nested()?;
    Ok(DeviceMessage {
        device_id: device_id.unwrap_or_default() as u32,
        registration_id: registration_id.unwrap_or_default() as u32,
        content: content.unwrap_or_default().to_string(),
    })
}
