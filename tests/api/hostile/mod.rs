//! Hostile clients against the real binary: a seeded generator of a few thousand malformed
//! requests over every route (`generated`), raw HTTP framing tricks (`framing`), and hostile
//! WebSocket frames (`websocket`). The oracle: never a 5xx, never a panic or error in the log,
//! never a hang (every wait is bounded), every error in the documented JSON shape with the
//! status its code has in docs/API.md, and a refused request changes nothing.

mod framing;
mod generated;
mod websocket;

use crate::helpers::{message_text, Binary, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The documented error codes and their statuses (docs/API.md, Conventions).
const CODES: &[(&str, u16)] = &[
    ("malformed_json", 400),
    ("invalid_data", 400),
    ("incorrect_arguments", 403),
    ("not_authenticated", 401),
    ("invalid_credentials", 400),
    ("invalid_token", 400),
    ("no_device", 400),
    ("device_exists", 403),
    ("device_changed", 403),
    ("no_recipient", 400),
    ("recipient_identity_changed", 403),
    ("reached_max_prekeys", 400),
    ("queue_full", 429),
    ("throttled", 429),
    ("payload_too_large", 413),
    ("length_required", 411),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("too_many_devices", 403),
    ("primary_device", 403),
    ("no_such_device", 404),
    ("stale_devices", 410),
    ("mismatched_devices", 409),
];

/// The oracle for one answer: no 5xx, and an error is `{"code","message"}` with the status of
/// its documented code.
pub(super) fn check_answer(what: &str, status: StatusCode, text: &str) {
    assert!(
        !status.is_server_error(),
        "{what}: server error {status}: {text}"
    );
    if status.is_client_error() {
        let body: Value = serde_json::from_str(text)
            .unwrap_or_else(|_| panic!("{what}: {status} without a JSON body: {text:?}"));
        let code = body["code"].as_str().unwrap_or_default();
        assert!(body["message"].is_string(), "{what}: no message in {body}");
        let documented = CODES.iter().find(|(c, _)| *c == code);
        assert_eq!(
            documented.map(|(_, s)| *s),
            Some(status.as_u16()),
            "{what}: code {code:?} with status {status}: {body}"
        );
    }
}

/// Nothing in the log a client caused: no panic, no error.
pub(super) fn assert_clean_log(s: &Binary) {
    let logs = s.logs();
    for line in logs.lines() {
        assert!(
            !line.contains("panicked") && !line.contains(" ERROR "),
            "the server logged: {line}\n{logs}"
        );
    }
}

/// A send on the binary that must succeed; the message id.
async fn send(s: &Binary, from: &TestUser, to: &TestUser, text: &str) -> u64 {
    let send = json!({"recipient": to.username, "message": message_text(to.reg_id, text)});
    let path = format!("/messages/{}", from.reg_id);
    let (status, body) = s.call("POST", &path, Some(&from.token), Some(&send)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_u64().expect("id")
}

/// alice (3 one-time prekeys) and bob (none) on the binary, each with one message queued.
pub(super) async fn fixture() -> (tempfile::TempDir, Binary, TestUser, TestUser) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Binary::start(dir.path(), &["--idle-timeout", "5"]).await;
    let alice = s.user_with_device("alice", 1001, 3, 0).await;
    // No one-time prekeys: the generator's bundle fetches of bob succeed and change nothing.
    let bob = s.user_with_device("bob", 2002, 0, 0).await;
    // Ids 1..=10 are used and gone, so that the generator's small ids hit no live message.
    for _ in 0..10 {
        let ids = json!([send(&s, &alice, &bob, "x").await]);
        let path = format!("/messages/{}", bob.reg_id);
        let (status, _) = s.call("DELETE", &path, Some(&bob.token), Some(&ids)).await;
        assert_eq!(status, StatusCode::OK);
    }
    for (from, to) in [(&alice, &bob), (&bob, &alice)] {
        send(&s, from, to, "hi").await;
    }
    (dir, s, alice, bob)
}
