//! `POST /auth/password`: changing the password revokes every older token.

use super::*;
use crate::helpers::{assert_401, assert_error, assert_invalid, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn password_change_refuses_a_wrong_current_or_weak_new_password() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "changer", Some("changer@example.org")).await;
    let a = change_password(&s, &token, "Wrong-Password-77", NEW_PASSWORD).await;
    assert_invalid(&a, "current_password", "wrong current");
    for weak in [
        "short",
        "12345678901",
        "password123",
        "changer2024",
        "Changer!!",
    ] {
        let a = change_password(&s, &token, PASSWORD, weak).await;
        assert_invalid(&a, "new_password", format!("weak new {weak}"));
    }
    let a = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": PASSWORD}),
    )
    .await;
    assert_invalid(&a, "new_password", "missing new");
    // Nothing changed.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
    assert_eq!(login(&s, "changer", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn password_change_revokes_old_tokens_and_swaps_the_password() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "rotator", None).await;
    let second = login(&s, "rotator", PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let a = change_password(&s, &token, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(a.body, Value::Null, "204 has an empty body");
    assert_401(&me(&s, &token).await, "the token that changed it");
    assert_401(&me(&s, &second).await, "another older token");
    let r = post_anon(&s, "/auth/jwt/refresh", json!({"token": token})).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "refresh revoked",
    );

    let old = login(&s, "rotator", PASSWORD).await;
    assert_error(
        &old,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "old password",
    );
    let new = login(&s, "rotator", NEW_PASSWORD).await;
    assert_eq!(new.status, StatusCode::OK, "{}", new.body);
    let m = me(&s, new.body["token"].as_str().unwrap()).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.body["id"], id);
}
