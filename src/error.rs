//! The one error type every handler returns, and its JSON shape on the wire:
//! `{"code": "<snake_case>", "message": "<text>"}` plus `errors` for `invalid_data`.

use std::collections::BTreeMap;

use serde::Serialize;
use warp::http::{header, StatusCode};
use warp::reply::{Reply, Response};

/// Per-field validation messages: a list of texts, or nested fields (list items are keyed by
/// their index).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum FieldError {
    Messages(Vec<String>),
    Nested(BTreeMap<String, FieldError>),
}

pub type FieldErrors = BTreeMap<String, FieldError>;

#[derive(Debug, Clone)]
pub enum ApiError {
    MalformedJson,
    InvalidData(FieldErrors),
    IncorrectArguments(&'static str),
    NotAuthenticated,
    InvalidCredentials,
    InvalidToken,
    NoDevice,
    RecipientNoDevice,
    DeviceExists,
    DeviceChanged,
    TooManyDevices,
    NoSuchDevice,
    PrimaryDevice,
    /// A token bound to a linked device asked for what only the account's primary may do.
    LinkedDevice,
    /// A send named devices with other registration ids than they have.
    StaleDevices(Vec<u32>),
    /// A send left out devices of the recipient, or named devices it does not have.
    MismatchedDevices {
        missing: Vec<u32>,
        extra: Vec<u32>,
    },
    NoRecipient,
    RecipientIdentityChanged,
    ReachedMaxPrekeys,
    QueueFull,
    /// An `Idempotency-Key` used before with another body.
    IdempotencyKeyReused,
    /// A send with this `Idempotency-Key` is still running.
    RequestInProgress,
    Throttled {
        retry_after_secs: u64,
    },
    RegistrationClosed,
    PayloadTooLarge,
    /// The request body did not arrive in full within `--body-timeout`.
    RequestTimeout,
    LengthRequired,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    /// The server cannot serve the request now (storage failing, overloaded); retry later.
    Unavailable,
    /// A browser page of an origin outside `--cors-origin` tried to open a WebSocket.
    OriginNotAllowed,
    /// An attachment request without `Tus-Resumable: 1.0.0`.
    UnsupportedVersion,
    /// An attachment that does not exist for the caller (unknown, expired, deleted, another
    /// account's upload, unfinished on download).
    NoSuchAttachment,
    /// A PATCH at another offset than the upload's (or while another PATCH writes it).
    OffsetMismatch,
    /// A PATCH of a complete upload.
    UploadComplete,
    /// A PATCH whose body does not match its `Upload-Checksum`.
    ChecksumMismatch,
    /// The account's attachments would go over `--attachment-quota`.
    AttachmentQuota,
    /// A `Range` outside the attachment (its length).
    RangeNotSatisfiable(u64),
    /// The blob store has no room left.
    InsufficientStorage,
    Internal(String),
}

impl ApiError {
    /// A single-field `invalid_data` error.
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(name.to_string(), FieldError::Messages(vec![message.into()]));
        ApiError::InvalidData(errors)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson
            | ApiError::InvalidData(_)
            | ApiError::InvalidCredentials
            | ApiError::InvalidToken
            | ApiError::NoDevice
            | ApiError::RecipientNoDevice
            | ApiError::NoRecipient
            | ApiError::ReachedMaxPrekeys => StatusCode::BAD_REQUEST,
            ApiError::IncorrectArguments(_)
            | ApiError::DeviceExists
            | ApiError::DeviceChanged
            | ApiError::RecipientIdentityChanged
            | ApiError::RegistrationClosed
            | ApiError::TooManyDevices
            | ApiError::PrimaryDevice
            | ApiError::LinkedDevice
            | ApiError::OriginNotAllowed
            | ApiError::AttachmentQuota => StatusCode::FORBIDDEN,
            ApiError::UnsupportedVersion => StatusCode::PRECONDITION_FAILED,
            ApiError::NoSuchAttachment => StatusCode::NOT_FOUND,
            ApiError::OffsetMismatch | ApiError::UploadComplete => StatusCode::CONFLICT,
            // TUS's own status for a checksum mismatch.
            ApiError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::StaleDevices(_) => StatusCode::GONE,
            ApiError::MismatchedDevices { .. } | ApiError::RequestInProgress => {
                StatusCode::CONFLICT
            }
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotAuthenticated => StatusCode::UNAUTHORIZED,
            ApiError::QueueFull | ApiError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::NotFound | ApiError::NoSuchDevice => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson => "malformed_json",
            ApiError::InvalidData(_) => "invalid_data",
            ApiError::IncorrectArguments(_) => "incorrect_arguments",
            ApiError::NotAuthenticated => "not_authenticated",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::InvalidToken => "invalid_token",
            ApiError::NoDevice | ApiError::RecipientNoDevice => "no_device",
            ApiError::DeviceExists => "device_exists",
            ApiError::DeviceChanged => "device_changed",
            ApiError::TooManyDevices => "too_many_devices",
            ApiError::NoSuchDevice => "no_such_device",
            ApiError::PrimaryDevice => "primary_device",
            ApiError::LinkedDevice => "linked_device",
            ApiError::StaleDevices(_) => "stale_devices",
            ApiError::MismatchedDevices { .. } => "mismatched_devices",
            ApiError::NoRecipient => "no_recipient",
            ApiError::RecipientIdentityChanged => "recipient_identity_changed",
            ApiError::ReachedMaxPrekeys => "reached_max_prekeys",
            ApiError::QueueFull => "queue_full",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RequestInProgress => "request_in_progress",
            ApiError::Throttled { .. } => "throttled",
            ApiError::RegistrationClosed => "registration_closed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::LengthRequired => "length_required",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable => "unavailable",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::UnsupportedVersion => "unsupported_version",
            ApiError::NoSuchAttachment => "no_such_attachment",
            ApiError::OffsetMismatch => "offset_mismatch",
            ApiError::UploadComplete => "upload_complete",
            ApiError::ChecksumMismatch => "checksum_mismatch",
            ApiError::AttachmentQuota => "attachment_quota",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::InsufficientStorage => "insufficient_storage",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            ApiError::MalformedJson => "The request body is not valid JSON.",
            ApiError::InvalidData(_) => "The request data is invalid.",
            ApiError::IncorrectArguments(what) => what,
            ApiError::NotAuthenticated => {
                "Authentication credentials were not provided or are invalid."
            }
            ApiError::InvalidCredentials => "Unable to log in with provided credentials.",
            ApiError::InvalidToken => "The token is invalid or expired.",
            ApiError::NoDevice => "No device registered for this user.",
            ApiError::RecipientNoDevice => "Recipient has not yet registered a device",
            ApiError::DeviceExists => "A device already exists for this user.",
            ApiError::DeviceChanged => "The registration id does not match the registered device.",
            ApiError::TooManyDevices => "The account has the most devices allowed.",
            ApiError::NoSuchDevice => "The account has no device with that id.",
            ApiError::PrimaryDevice => {
                "The primary device cannot be unlinked; delete it with DELETE /device/."
            }
            ApiError::LinkedDevice => {
                "This token belongs to a linked device; only the primary device's may do this."
            }
            ApiError::StaleDevices(_) => {
                "Some devices have a new registration id; fetch their bundles again."
            }
            ApiError::MismatchedDevices { .. } => {
                "The devices named are not the recipient's; adjust the device list."
            }
            ApiError::NoRecipient => "No user with that username exists.",
            ApiError::RecipientIdentityChanged => {
                "The message's registration id does not match the recipient's device."
            }
            ApiError::ReachedMaxPrekeys => "The upload would exceed the maximum number of prekeys.",
            ApiError::QueueFull => "The recipient's message queue is full.",
            ApiError::IdempotencyKeyReused => {
                "This Idempotency-Key was used with another request body."
            }
            ApiError::RequestInProgress => {
                "A request with this Idempotency-Key is still in progress; retry later."
            }
            ApiError::Throttled { .. } => "Too many requests; retry later.",
            ApiError::RegistrationClosed => "Registration is closed on this server.",
            ApiError::PayloadTooLarge => "The request body is too large.",
            ApiError::RequestTimeout => "The request body did not arrive in time.",
            ApiError::LengthRequired => "A Content-Length header is required.",
            ApiError::NotFound => "Not found.",
            ApiError::MethodNotAllowed => "Method not allowed.",
            ApiError::UnsupportedMediaType => "Unsupported media type.",
            ApiError::Unavailable => "The server is temporarily unavailable; retry later.",
            ApiError::OriginNotAllowed => "Pages of this origin may not use this server.",
            ApiError::UnsupportedVersion => "This server speaks TUS 1.0.0 (Tus-Resumable: 1.0.0).",
            ApiError::NoSuchAttachment => "No such attachment (it may have expired).",
            ApiError::OffsetMismatch => {
                "Upload-Offset is not the upload's offset; ask HEAD for it and resume there."
            }
            ApiError::UploadComplete => "The upload is complete and cannot change.",
            ApiError::ChecksumMismatch => {
                "The body does not match Upload-Checksum; none of it was kept."
            }
            ApiError::AttachmentQuota => "The account's attachments would exceed its quota.",
            ApiError::RangeNotSatisfiable(_) => "The range is outside the attachment.",
            ApiError::InsufficientStorage => {
                "The server has no room for this upload now; resume it later."
            }
            ApiError::Internal(_) => "Internal server error.",
        }
    }
}

/// The `Retry-After` of a 503 `unavailable`, in seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a FieldErrors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_devices: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_devices: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_devices: Option<&'a [u32]>,
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            log::error!("internal error: {cause}");
        }
        let errors = match &self {
            ApiError::InvalidData(errors) => Some(errors),
            _ => None,
        };
        let (mut stale_devices, mut missing_devices, mut extra_devices) = (None, None, None);
        match &self {
            ApiError::StaleDevices(stale) => stale_devices = Some(stale.as_slice()),
            ApiError::MismatchedDevices { missing, extra } => {
                missing_devices = Some(missing.as_slice());
                extra_devices = Some(extra.as_slice());
            }
            _ => {}
        }
        let body = Body {
            code: self.code(),
            message: self.message(),
            errors,
            stale_devices,
            missing_devices,
            extra_devices,
        };
        let mut res =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        let headers = res.headers_mut();
        match &self {
            ApiError::NotAuthenticated => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"api\""),
                );
            }
            ApiError::Throttled { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, (*retry_after_secs).into());
            }
            // Overload and storage faults pass; a client should come back soon, not hammer.
            ApiError::Unavailable => {
                headers.insert(header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER_SECS.into());
            }
            ApiError::UnsupportedVersion => {
                headers.insert("tus-version", header::HeaderValue::from_static("1.0.0"));
            }
            ApiError::RangeNotSatisfiable(length) => {
                if let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{length}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::InsufficientStorage => {
                headers.insert(header::RETRY_AFTER, 60u64.into());
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::RequestTimeout => {
                headers.insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        res
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        use crate::storage::StoreError;
        match e {
            StoreError::UsernameTaken => {
                ApiError::field("username", "A user with that username already exists.")
            }
            StoreError::EmailTaken => {
                ApiError::field("email", "A user with that email already exists.")
            }
            StoreError::DeviceExists => ApiError::DeviceExists,
            StoreError::NoDevice => ApiError::NoDevice,
            StoreError::TooManyDevices => ApiError::TooManyDevices,
            StoreError::NoSuchDevice => ApiError::NoSuchDevice,
            StoreError::PrimaryDevice => ApiError::PrimaryDevice,
            StoreError::RegistrationIdTaken => ApiError::field(
                "registrationId",
                "Another device of the account has this registration id.",
            ),
            StoreError::IdentityKeyMismatch => ApiError::field(
                "identityKey",
                "A linked device must have the account's identity key.",
            ),
            StoreError::DevicesChanged(m) if !m.stale.is_empty() => ApiError::StaleDevices(m.stale),
            StoreError::DevicesChanged(m) => ApiError::MismatchedDevices {
                missing: m.missing,
                extra: m.extra,
            },
            StoreError::TooManyPrekeys => ApiError::ReachedMaxPrekeys,
            StoreError::QueueFull => ApiError::QueueFull,
            StoreError::InvalidInvite => {
                ApiError::field("invite", "This invite is not valid or was already used.")
            }
            StoreError::NoUser => ApiError::NotAuthenticated,
            StoreError::Db(e) => ApiError::Internal(format!("storage: {e}")),
            e @ StoreError::Io { .. } => ApiError::Internal(format!("storage: {e}")),
            StoreError::Corrupt(e) => ApiError::Internal(format!("corrupt record: {e}")),
            // The failure itself is logged once, where storage marks itself failed.
            StoreError::Unavailable(e) => {
                log::debug!("storage unavailable: {e}");
                ApiError::Unavailable
            }
        }
    }
}
