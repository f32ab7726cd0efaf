//! Every account route answers the same with and without a trailing slash.

use super::*;
use crate::helpers::{assert_401, assert_invalid, bearer, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn account_routes_answer_identically_with_and_without_trailing_slash() {
    let s = TestServer::start().await;
    // Register: both 201 with the same shape.
    let a = post_anon(
        &s,
        "/auth/users",
        json!({"username": "slash1", "password": PASSWORD}),
    )
    .await;
    let b = post_anon(
        &s,
        "/auth/users/",
        json!({"username": "slash2", "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(b.body["username"], "slash2");
    // Same error for the same bad body.
    let bad = json!({"username": "bad name", "password": "1"});
    let a = post_anon(&s, "/auth/users", bad.clone()).await;
    let b = post_anon(&s, "/auth/users/", bad).await;
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Login.
    let creds = json!({"username": "slash1", "password": PASSWORD});
    let a = post_anon(&s, "/auth/jwt/create", creds.clone()).await;
    let b = post_anon(&s, "/auth/jwt/create/", creds).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    let token = b.body["token"].as_str().unwrap().to_string();
    let wrong = json!({"username": "slash1", "password": "Wrong-Pass-123"});
    let a = post_anon(&s, "/auth/jwt/create", wrong.clone()).await;
    let b = post_anon(&s, "/auth/jwt/create/", wrong).await;
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Me, with and without a token.
    let a = s.send("GET", "/auth/users/me", bearer(&token), None).await;
    let b = s.send("GET", "/auth/users/me/", bearer(&token), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let a = s.send("GET", "/auth/users/me", None, None).await;
    let b = s.send("GET", "/auth/users/me/", None, None).await;
    assert_401(&a, "no slash");
    assert_401(&b, "slash");

    // Verify and refresh.
    for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
        let a = post_anon(&s, path, json!({"token": token})).await;
        let b = post_anon(&s, &format!("{path}/"), json!({"token": token})).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert_eq!(b.status, StatusCode::OK, "{path}/: {}", b.body);
        let a = post_anon(&s, path, json!({"token": "junk"})).await;
        let b = post_anon(&s, &format!("{path}/"), json!({"token": "junk"})).await;
        assert_eq!((a.status, &a.body), (b.status, &b.body), "{path}");
    }

    // Password change and delete: same refusal for a wrong current password.
    let body = json!({"current_password": "Wrong-Pass-123", "new_password": NEW_PASSWORD});
    let a = post_json(&s, "/auth/password", Some(&token), body.clone()).await;
    let b = post_json(&s, "/auth/password/", Some(&token), body).await;
    assert_invalid(&a, "current_password", "no slash");
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let body = json!({"current_password": "Wrong-Pass-123"});
    let a = delete_me(&s, "/auth/users/me", bearer(&token), body.clone()).await;
    let b = delete_me(&s, "/auth/users/me/", bearer(&token), body).await;
    assert_invalid(&a, "current_password", "no slash");
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Reset and confirm.
    let a = reset(&s, "x@example.org").await;
    let b = post_anon(
        &s,
        "/auth/password/reset/",
        json!({"email": "x@example.org"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let body = json!({"uid": "MQ", "token": "nope", "new_password": NEW_PASSWORD});
    let a = post_anon(&s, "/auth/password/reset/confirm", body.clone()).await;
    let b = post_anon(&s, "/auth/password/reset/confirm/", body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Successful password change and delete through the slashed routes.
    let b = post_json(
        &s,
        "/auth/password/",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(b.status, StatusCode::NO_CONTENT, "{}", b.body);
    let token = login(&s, "slash1", NEW_PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let b = delete_me(
        &s,
        "/auth/users/me/",
        bearer(&token),
        json!({"current_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(b.status, StatusCode::NO_CONTENT, "{}", b.body);
    assert_401(&me(&s, &token).await, "deleted via slash route");
}
