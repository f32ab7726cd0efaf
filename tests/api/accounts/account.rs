//! The caller's own account: `GET` and `DELETE /auth/users/me`.

use super::*;
use crate::helpers::{assert_401, assert_error, assert_invalid, bearer, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn get_me_answers_email_username_and_id() {
    let s = TestServer::start().await;
    let a = register(&s, "MeUser", PASSWORD, Some("Me.User@Example.org")).await;
    let id = a.body["id"].as_u64().unwrap();
    let token = login(&s, "meuser", PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let m = me(&s, &token).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.body);
    assert_eq!(
        m.body,
        json!({"email": "Me.User@Example.org", "username": "MeUser", "id": id})
    );
    let (id2, t2) = registered(&s, "nomailme", None).await;
    assert_eq!(
        me(&s, &t2).await.body,
        json!({"email": "", "username": "nomailme", "id": id2})
    );
}

#[tokio::test]
async fn delete_me_needs_the_current_password() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "keepme", None).await;
    let a = delete_me(
        &s,
        "/auth/users/me",
        bearer(&token),
        json!({"current_password": "Wrong-Password-77"}),
    )
    .await;
    assert_invalid(&a, "current_password", "wrong current_password");
    let a = delete_me(
        &s,
        "/auth/users/me",
        bearer(&token),
        json!({"password": PASSWORD}),
    )
    .await;
    assert_invalid(&a, "current_password", "missing current_password");
    let a = delete_me(
        &s,
        "/auth/users/me",
        bearer(&token),
        json!({"current_password": 42}),
    )
    .await;
    assert_invalid(&a, "current_password", "numeric current_password");
    // Still there.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
    assert_eq!(login(&s, "keepme", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn deleted_users_tokens_stay_dead_even_after_the_username_is_registered_again() {
    let s = TestServer::start().await;
    let (old_id, old_token) = registered(&s, "Phoenix", Some("phoenix@example.org")).await;
    let a = delete_me(
        &s,
        "/auth/users/me",
        bearer(&old_token),
        json!({"current_password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(a.body, Value::Null);
    assert_401(&me(&s, &old_token).await, "old token after delete");
    let v = post_anon(&s, "/auth/jwt/verify", json!({"token": old_token})).await;
    assert_error(
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "verify after delete",
    );
    let l = login(&s, "Phoenix", PASSWORD).await;
    assert_error(
        &l,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "login after delete",
    );

    // The username and the email are free again.
    let a = register(&s, "phoenix", PASSWORD, Some("phoenix@example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let new_id = a.body["id"].as_u64().unwrap();
    assert_ne!(new_id, old_id, "a new id");
    assert_401(&me(&s, &old_token).await, "old token after re-registration");
    let r = post_anon(&s, "/auth/jwt/refresh", json!({"token": old_token})).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "refresh old token",
    );

    let new_token = login(&s, "PHOENIX", PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let m = me(&s, &new_token).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.body["id"], new_id);
    assert_eq!(m.body["username"], "phoenix");
}

#[tokio::test]
async fn deleting_twice_with_the_same_token_is_401() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "twice", None).await;
    let body = json!({"current_password": PASSWORD});
    let a = delete_me(&s, "/auth/users/me", bearer(&token), body.clone()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = delete_me(&s, "/auth/users/me", bearer(&token), body).await;
    assert_401(&a, "second delete");
}
