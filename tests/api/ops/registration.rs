//! Registration modes: invite-only takes each invite once (and a refused registration does not
//! spend it); closed refuses every new account while existing users log in.

use super::{assert_error, first_line, register, stats_of, users_of};
use crate::helpers::{config_on, operator_ok, stop_closed, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    assert_error(status, body, StatusCode::BAD_REQUEST, "invalid_data");
    assert!(
        body["errors"].get(field).is_some(),
        "errors do not name {field}: {body}"
    );
}

/// `POST /auth/users` with an invite.
async fn register_with_invite(
    s: &TestServer,
    username: &str,
    password: &str,
    invite: &str,
) -> (StatusCode, Value) {
    let body = json!({"username": username, "password": password, "invite": invite});
    register(s, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invite_only_registration_takes_each_invite_once() {
    let s = TestServer::start_with(&["--no-rate-limit", "--registration", "invite"]).await;
    let dir = s.dir.path().to_path_buf();
    let (status, body) = register(&s, json!({"username": "ann", "password": PASSWORD})).await;
    assert_invalid(status, &body, "invite");

    let invite = first_line(&operator_ok(&dir, &["invites", "--count", "1"], None).await);

    // A refused registration (weak password, name taken) does not use the invite up.
    let (status, body) = register_with_invite(&s, "ann", "12345678", &invite).await;
    assert_invalid(status, &body, "password");

    let (status, body) = register_with_invite(&s, "ann", PASSWORD, &invite).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "ann");
    s.login("ann", PASSWORD).await;

    let (status, body) = register_with_invite(&s, "ben", PASSWORD, &invite).await;
    assert_invalid(status, &body, "invite");
    let (status, body) = register_with_invite(&s, "ben", PASSWORD, "not-an-invite-at-all").await;
    assert_invalid(status, &body, "invite");

    // A name already taken is refused without spending a fresh invite.
    let second = first_line(&operator_ok(&dir, &["invites", "--count", "1"], None).await);
    let (status, body) = register_with_invite(&s, "ANN", PASSWORD, &second).await;
    assert_invalid(status, &body, "username");
    let (status, body) = register_with_invite(&s, "ben", PASSWORD, &second).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stats = stats_of(&operator_ok(&dir, &["stats"], None).await);
    assert_eq!((stats["users"], stats["invites"]), (2, 0));
    stop_closed(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_registration_refuses_new_accounts_but_existing_users_log_in() {
    let open = TestServer::start().await;
    let old = open.user_with_device("olduser", 7, 1, 0).await;
    let dir = stop_closed(open).await;

    let path = dir.path().to_path_buf();
    let flags = [
        "--listen",
        "127.0.0.1:0",
        "--pbkdf2-iterations",
        "1000",
        "--no-rate-limit",
    ];
    let config = config_on(&path, &[&flags[..], &["--registration", "closed"]].concat());
    let s = TestServer::start_config(config, dir).await;
    let (status, body) = register(&s, json!({"username": "newbie", "password": PASSWORD})).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "registration_closed");
    // Even with an invite, and even with a body that would otherwise be invalid.
    let invite = first_line(&operator_ok(&path, &["invites", "--count", "1"], None).await);
    let (status, body) = register_with_invite(&s, "newbie", PASSWORD, &invite).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "registration_closed");

    let token = s.login("OldUser", PASSWORD).await;
    let (status, me) = s.get("/auth/users/me", &token).await;
    assert_eq!((status, me["id"].as_u64()), (StatusCode::OK, Some(old.id)));
    // The token from before the restart still works too (the secret is kept in the data dir).
    let (status, _) = s.get(&format!("/device/{}", old.reg_id), &old.token).await;
    assert_eq!(status, StatusCode::OK);
    let list = users_of(&operator_ok(&path, &["users", "list"], None).await);
    assert_eq!(list.len(), 1, "{list:?}");
    stop_closed(s).await;
}
