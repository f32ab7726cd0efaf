//! What a call answers when it does not succeed: a refusal by the server (its status and JSON
//! error), or a failure to talk to it at all.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// The server's refusal: the status and the `{"code", "message", "errors"}` body of
/// `docs/API.md`, with the `Retry-After` of a 429/503.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    /// Empty when the body was not the JSON error shape (see `body`).
    pub code: String,
    pub message: String,
    /// The per-field detail of `invalid_data`.
    pub errors: Option<Value>,
    /// Seconds, from the `Retry-After` header.
    pub retry_after: Option<u64>,
    /// The body as it came, for answers that are not the JSON error shape.
    pub body: String,
}

#[derive(Debug)]
pub enum Error {
    /// The server answered with another status than the route's success (boxed: it is the
    /// big variant, and results travel through every call).
    Refused(Box<Refusal>),
    /// The success answer did not decode into the expected shape.
    Decode { status: u16, detail: String },
    /// No answer: connection, timeout, TLS, WebSocket protocol.
    Transport(String),
}

#[derive(Deserialize)]
struct Body {
    code: String,
    message: String,
    errors: Option<Value>,
}

impl Refusal {
    /// A list of device ids in the refusal's body: `staleDevices` of a 410, `missingDevices` and
    /// `extraDevices` of a 409 (empty when absent).
    pub fn devices(&self, field: &str) -> Vec<u32> {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| serde_json::from_value(v.get(field)?.clone()).ok())
            .unwrap_or_default()
    }
}

impl Error {
    pub(crate) fn refused(status: u16, body: &[u8], retry_after: Option<u64>) -> Error {
        let parsed = serde_json::from_slice::<Body>(body).ok();
        let (code, message, errors) = match parsed {
            Some(b) => (b.code, b.message, b.errors),
            None => (String::new(), String::new(), None),
        };
        Error::Refused(Box::new(Refusal {
            status,
            code,
            message,
            errors,
            retry_after,
            body: String::from_utf8_lossy(body).into_owned(),
        }))
    }

    /// The refusal of an answer that has no body (a `HEAD`): `code` stands for the status.
    pub(crate) fn refused_without_body(
        status: u16,
        code: String,
        retry_after: Option<u64>,
    ) -> Error {
        Error::Refused(Box::new(Refusal {
            status,
            code,
            message: String::new(),
            errors: None,
            retry_after,
            body: String::new(),
        }))
    }

    pub(crate) fn transport(e: impl fmt::Display) -> Error {
        Error::Transport(e.to_string())
    }

    /// The refusal, when the server refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The status and `code` of a refusal (`None` for other errors): handy in tests.
    pub fn status_code(&self) -> Option<(u16, &str)> {
        self.refusal().map(|r| (r.status, r.code.as_str()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) if r.code.is_empty() => write!(f, "{}: {}", r.status, r.body),
            Error::Refused(r) => {
                write!(f, "{} {}: {}", r.status, r.code, r.message)?;
                if let Some(errors) = &r.errors {
                    write!(f, " {errors}")?;
                }
                Ok(())
            }
            Error::Decode { status, detail } => {
                write!(f, "a {status} answer of an unexpected shape: {detail}")
            }
            Error::Transport(e) => write!(f, "no answer: {e}"),
        }
    }
}

impl std::error::Error for Error {}
