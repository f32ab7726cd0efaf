//! Field-by-field validation of JSON bodies, collecting every problem into `invalid_data`'s
//! `errors` (one list of messages per field, nested for objects and list items).

use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError, FieldErrors};

/// The top-level object of a body; anything else (or an empty object) is `incorrect_arguments`.
pub fn object(value: &Value) -> Result<&Map<String, Value>, ApiError> {
    match value {
        Value::Object(map) if !map.is_empty() => Ok(map),
        Value::Object(_) => Err(ApiError::IncorrectArguments(
            "The request body is an empty object.",
        )),
        _ => Err(ApiError::IncorrectArguments(
            "The request body must be a JSON object.",
        )),
    }
}

/// The top-level list of a body; anything else (or an empty list) is `incorrect_arguments`.
pub fn list(value: &Value) -> Result<&Vec<Value>, ApiError> {
    match value {
        Value::Array(items) if !items.is_empty() => Ok(items),
        Value::Array(_) => Err(ApiError::IncorrectArguments(
            "The request body is an empty list.",
        )),
        _ => Err(ApiError::IncorrectArguments(
            "The request body must be a JSON list.",
        )),
    }
}

pub const REQUIRED: &str = "This field is required.";

pub const UNSAFE_TEXT: &str =
    "This field may not contain control, line separator or text direction characters.";

/// A character refused in text the server stores, prints or logs: the controls (Unicode `Cc`:
/// tab, newline, NUL, DEL, the C1 set), the line and paragraph separators, and the
/// bidirectional marks, embeddings, overrides and isolates. They break the columns of
/// `users list` and the lines of a log, or make a terminal show text in another order than it has.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` for a line of operator output: refused characters (stored before they were refused)
/// written as `\u{..}` escapes.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return text.into();
    }
    text.chars()
        .map(|c| match is_unsafe_char(c) {
            true => format!("\\u{{{:x}}}", c as u32),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// Reads fields out of one JSON object, remembering what was wrong with each.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    errors: FieldErrors,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            obj,
            errors: FieldErrors::new(),
        }
    }

    /// Fields of a nested value that must be an object.
    pub fn of(value: &'a Value) -> Result<Fields<'a>, FieldErrors> {
        match value {
            Value::Object(obj) => Ok(Fields::new(obj)),
            _ => Err(messages("", "Expected an object.")),
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    pub fn fail(&mut self, name: &str, message: impl Into<String>) {
        match self
            .errors
            .entry(name.to_string())
            .or_insert_with(|| FieldError::Messages(Vec::new()))
        {
            FieldError::Messages(list) => list.push(message.into()),
            FieldError::Nested(_) => {}
        }
    }

    pub fn nest(&mut self, name: &str, errors: FieldErrors) {
        self.errors
            .insert(name.to_string(), FieldError::Nested(errors));
    }

    pub fn has_error(&self, name: &str) -> bool {
        self.errors.contains_key(name)
    }

    /// A string field; `None` (with an error noted when required) if absent or not a string.
    pub fn string(&mut self, name: &str, required: bool) -> Option<&'a str> {
        match self.get(name) {
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.fail(name, "Not a valid string.");
                None
            }
            None => {
                if required {
                    self.fail(name, REQUIRED);
                }
                None
            }
        }
    }

    /// A required integer in `0..=max`; numeric strings are accepted.
    pub fn int(&mut self, name: &str, max: u64) -> Option<u64> {
        let parsed = match self.get(name) {
            None => {
                self.fail(name, REQUIRED);
                return None;
            }
            Some(v) => as_int(v),
        };
        match parsed {
            Some(n) if n <= max => Some(n),
            Some(_) => {
                self.fail(
                    name,
                    format!("Ensure this value is less than or equal to {max}."),
                );
                None
            }
            None => {
                self.fail(name, "A valid integer is required.");
                None
            }
        }
    }

    /// Ends reading: the collected errors, if any, as `invalid_data`.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidData(self.errors))
        }
    }

    /// Ends reading a nested object: its errors, if any.
    pub fn finish_nested(self) -> Result<(), FieldErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// A non-negative integer from a JSON number or a numeric string.
pub fn as_int(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Errors of one field (`""` stands for the value itself, in nested items).
pub fn messages(name: &str, message: &str) -> FieldErrors {
    let mut e = FieldErrors::new();
    e.insert(
        name.to_string(),
        FieldError::Messages(vec![message.to_string()]),
    );
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_separators_and_direction_marks_are_unsafe_and_printed_escaped() {
        for c in [
            '\t', '\n', '\r', '\0', '\u{7f}', '\u{85}', '\u{2028}', '\u{202e}', '\u{2067}',
        ] {
            assert!(is_unsafe_char(c), "{c:?}");
        }
        for c in ['a', ' ', '@', 'é', '\u{200d}', '漢'] {
            assert!(!is_unsafe_char(c), "{c:?}");
        }
        assert_eq!(printable("a\tb@x.org"), "a\\u{9}b@x.org");
        assert_eq!(printable("plain@x.org"), "plain@x.org");
    }
}
