//! Why the process could not do what it was asked: the server could not start, or an operator
//! command was refused or failed. `main` prints the sentence and exits 1; the admin socket sends
//! it back to the command line.

use crate::error::{ApiError, FieldError, FieldErrors};
use crate::storage::StoreError;

/// The result of the process-level steps (`main`, `server`, `admin`, opening the app).
pub type Result<T, E = Failure> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API's rules refused the input (operator commands check what the API checks).
    #[error("{}", refusal_text(.0))]
    Refused(ApiError),
    /// A file or socket could not be used; `doing` names it.
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else, as a plain sentence.
    #[error("{0}")]
    Message(String),
}

impl Failure {
    pub fn io(doing: impl Into<String>, source: std::io::Error) -> Failure {
        Failure::Io {
            doing: doing.into(),
            source,
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Refused(e)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Message(message.to_string())
    }
}

/// An API error as a sentence: the per-field messages of `invalid_data`, else the message.
fn refusal_text(e: &ApiError) -> String {
    match e {
        ApiError::InvalidData(errors) => {
            let mut parts = Vec::new();
            flatten(errors, "", &mut parts);
            parts.join(" ")
        }
        other => other.message().to_string(),
    }
}

fn flatten(errors: &FieldErrors, prefix: &str, parts: &mut Vec<String>) {
    for (field, error) in errors {
        match error {
            FieldError::Messages(texts) => {
                parts.push(format!("{prefix}{field}: {}", texts.join(" ")))
            }
            FieldError::Nested(inner) => flatten(inner, &format!("{prefix}{field}."), parts),
        }
    }
}
