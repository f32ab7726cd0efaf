//! Assertions on the server's answers: the JSON error shape of docs/API.md (`{"code",
//! "message"}` plus `errors` for `invalid_data`), and the 401 challenge.

use std::fmt::Display;

use reqwest::StatusCode;
use serde_json::Value;

use super::Answer;

/// A status and a JSON body: what `TestServer::call` and `TestServer::send` answer.
pub trait Reply {
    fn status(&self) -> StatusCode;
    fn body(&self) -> &Value;
}

impl Reply for (StatusCode, Value) {
    fn status(&self) -> StatusCode {
        self.0
    }
    fn body(&self) -> &Value {
        &self.1
    }
}

impl Reply for (StatusCode, &Value) {
    fn status(&self) -> StatusCode {
        self.0
    }
    fn body(&self) -> &Value {
        self.1
    }
}

impl Reply for Answer {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn body(&self) -> &Value {
        &self.body
    }
}

/// The answer is the error `status` with `code` and a `message`; `what` names the case.
#[track_caller]
pub fn assert_error(answer: &impl Reply, status: StatusCode, code: &str, what: impl Display) {
    let body = answer.body();
    assert_eq!(answer.status(), status, "{what}: status (body {body})");
    assert_eq!(body["code"], code, "{what}: code (body {body})");
    assert!(body["message"].is_string(), "{what}: no message: {body}");
}

/// A 400 `invalid_data` with its per-field `errors` object.
#[track_caller]
pub fn assert_invalid_data(answer: &impl Reply, what: impl Display) {
    assert_error(answer, StatusCode::BAD_REQUEST, "invalid_data", &what);
    let body = answer.body();
    assert!(body["errors"].is_object(), "{what}: no errors: {body}");
}

/// A 400 `invalid_data` whose `errors` names `field`.
#[track_caller]
pub fn assert_invalid(answer: &impl Reply, field: &str, what: impl Display) {
    assert_invalid_data(answer, &what);
    let body = answer.body();
    assert!(
        !body["errors"][field].is_null(),
        "{what}: errors does not name `{field}`: {body}"
    );
}

/// A 400 `invalid_data` whose `errors` names `field` and, somewhere inside it, `inner`.
#[track_caller]
pub fn assert_invalid_in(
    answer: &impl Reply,
    field: &str,
    inner: Option<&str>,
    what: impl Display,
) {
    assert_invalid(answer, field, &what);
    if let Some(inner) = inner {
        let body = answer.body();
        assert!(
            has_key(&body["errors"][field], inner),
            "{what}: errors.{field} does not name `{inner}`: {body}"
        );
    }
}

/// A 401 `not_authenticated` with `WWW-Authenticate: Bearer realm="api"`.
#[track_caller]
pub fn assert_401(answer: &Answer, what: impl Display) {
    assert_error(answer, StatusCode::UNAUTHORIZED, "not_authenticated", &what);
    let challenge = answer.headers.get("www-authenticate");
    assert_eq!(
        challenge.and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"api\""),
        "{what}: WWW-Authenticate"
    );
}

/// A 429 `throttled` whose `Retry-After` is whole seconds between 1 and 60.
#[track_caller]
pub fn assert_throttled(answer: &Answer, what: impl Display) {
    assert_error(answer, StatusCode::TOO_MANY_REQUESTS, "throttled", &what);
    let retry = answer.headers.get("retry-after");
    let secs = retry.and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let secs = secs.unwrap_or_else(|| panic!("{what}: Retry-After in seconds: {retry:?}"));
    assert!((1..=60).contains(&secs), "{what}: Retry-After {secs}");
}

/// Whether `key` is an object key anywhere inside `v`.
fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(key) || m.values().any(|x| has_key(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key(x, key)),
        _ => false,
    }
}
