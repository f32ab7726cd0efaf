//! Login, refresh and verify, and the `Authorization` header: which tokens the server takes.

use super::*;
use crate::helpers::{assert_401, assert_error, assert_invalid, TestServer, PASSWORD};
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn login_matches_the_username_case_insensitively_and_token_authenticates() {
    let s = TestServer::start().await;
    let (id, _) = registered(&s, "CaseUser", None).await;
    for name in ["CaseUser", "caseuser", "CASEUSER", "cAsEuSeR"] {
        let l = login(&s, name, PASSWORD).await;
        assert_eq!(l.status, StatusCode::OK, "{name}: {}", l.body);
        let token = l.body["token"].as_str().expect("token");
        assert_eq!(l.body.as_object().unwrap().len(), 1, "{}", l.body);
        let m = me(&s, token).await;
        assert_eq!(m.status, StatusCode::OK, "{}", m.body);
        assert_eq!(m.body["id"], id);
        assert_eq!(m.body["username"], "CaseUser", "stored as registered");
    }
}

#[tokio::test]
async fn login_wrong_password_and_unknown_user_answer_identically() {
    let s = TestServer::start().await;
    registered(&s, "realuser", None).await;
    let wrong = login(&s, "realuser", "Not-The-Password-99").await;
    let unknown = login(&s, "ghostuser", "Not-The-Password-99").await;
    let unknown2 = login(&s, "ghostuser", PASSWORD).await;
    for a in [&wrong, &unknown, &unknown2] {
        assert_error(
            a,
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            "bad login",
        );
        assert!(a.body.get("token").is_none());
    }
    assert_eq!(wrong.body, unknown.body, "identical bodies");
    assert_eq!(wrong.body, unknown2.body, "identical bodies");
}

#[tokio::test]
async fn login_missing_or_mistyped_fields_are_invalid_data() {
    let s = TestServer::start().await;
    registered(&s, "loginfields", None).await;
    let a = post_anon(&s, "/auth/jwt/create", json!({"username": "loginfields"})).await;
    assert_invalid(&a, "password", "missing password");
    let a = post_anon(&s, "/auth/jwt/create", json!({"password": PASSWORD})).await;
    assert_invalid(&a, "username", "missing username");
    let a = post_anon(
        &s,
        "/auth/jwt/create",
        json!({"username": "loginfields", "password": null}),
    )
    .await;
    assert_invalid(&a, "password", "null password");
    let a = post_anon(
        &s,
        "/auth/jwt/create",
        json!({"username": 12345, "password": PASSWORD}),
    )
    .await;
    assert_invalid(&a, "username", "numeric username");
    let a = post_anon(
        &s,
        "/auth/jwt/create",
        json!({"username": "loginfields", "password": ["x"]}),
    )
    .await;
    assert_invalid(&a, "password", "array password");
}

#[tokio::test]
async fn verify_returns_the_same_token_and_refresh_a_working_new_one() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "tokenuser", None).await;
    let v = post_anon(&s, "/auth/jwt/verify", json!({"token": token})).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
    assert_eq!(v.body, json!({"token": token}));

    let r = post_anon(&s, "/auth/jwt/refresh", json!({"token": token})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = r.body["token"].as_str().expect("token").to_string();
    let m = me(&s, &fresh).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.body);
    assert_eq!(m.body["id"], id);
    let v = post_anon(&s, "/auth/jwt/verify", json!({"token": fresh})).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
}

#[tokio::test]
async fn verify_and_refresh_refuse_garbage_and_forged_tokens() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "garbage", None).await;
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{flipped}{}", &sig[1..]);
    let tampered_sig = parts.join(".");
    let other_secret = craft(
        "a-completely-different-secret-0123456789",
        id,
        "garbage",
        0,
        now(),
        now() + 3600,
        now(),
    );
    for bad in [
        "garbage".to_string(),
        "".to_string(),
        "a.b.c".to_string(),
        "Bearer x.y.z".to_string(),
        tampered_sig,
        other_secret,
        alg_none(id, "garbage"),
        "x".repeat(10_000),
    ] {
        for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
            let a = post_anon(&s, path, json!({"token": bad})).await;
            assert_error(
                &a,
                StatusCode::BAD_REQUEST,
                "invalid_token",
                format!("{path} {:.40}", bad),
            );
        }
    }
    for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
        let a = post_anon(&s, path, json!({"token": 12345})).await;
        assert_invalid(&a, "token", format!("{path} numeric token"));
        let a = post_anon(&s, path, json!({"tok": token})).await;
        assert_invalid(&a, "token", format!("{path} missing token"));
    }
}

#[tokio::test]
async fn expired_alg_none_and_foreign_secret_tokens_are_refused() {
    let s = TestServer::start_with(&["--no-rate-limit", "--jwt-secret", SECRET]).await;
    let (id, _) = registered(&s, "crafty", None).await;
    let t = now();

    // Sanity: a token crafted the way the server makes them is accepted.
    let good = craft(SECRET, id, "crafty", 0, t, t + 600, t);
    let a = me(&s, &good).await;
    assert_eq!(a.status, StatusCode::OK, "crafted valid token: {}", a.body);
    assert_eq!(a.body["id"], id);
    let a = post_anon(&s, "/auth/jwt/verify", json!({"token": good})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Expired, correctly signed.
    let expired = craft(SECRET, id, "crafty", 0, t - 7200, t - 3600, t - 7200);
    assert_401(&me(&s, &expired).await, "expired on /me");
    for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
        let a = post_anon(&s, path, json!({"token": expired})).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_token", path);
    }
    // Expired a second ago.
    let just = craft(SECRET, id, "crafty", 0, t - 100, t - 1, t - 100);
    assert_401(&me(&s, &just).await, "just expired on /me");

    // alg: none and another secret.
    let none = alg_none(id, "crafty");
    assert_401(&me(&s, &none).await, "alg none on /me");
    let foreign = craft(
        "another-secret-entirely-0123456789abcd",
        id,
        "crafty",
        0,
        t,
        t + 600,
        t,
    );
    assert_401(&me(&s, &foreign).await, "foreign secret on /me");
    for bad in [&none, &foreign] {
        let a = post_anon(&s, "/auth/jwt/verify", json!({"token": bad})).await;
        assert_error(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "verify forged",
        );
    }

    // A stale token version, and a user id that does not exist.
    let stale = craft(SECRET, id, "crafty", 1, t, t + 600, t);
    assert_401(&me(&s, &stale).await, "wrong ver on /me");
    let nobody = craft(SECRET, id + 1000, "crafty", 0, t, t + 600, t);
    assert_401(&me(&s, &nobody).await, "unknown user on /me");
}

#[tokio::test]
async fn refresh_stops_after_the_max_age_from_the_original_login() {
    let s = TestServer::start_with(&["--no-rate-limit", "--jwt-secret", SECRET]).await;
    let (id, _) = registered(&s, "oldlogin", None).await;
    let t = now();
    // Still valid, but the login it descends from is 8 days old (default max age: 7 days).
    let old = craft(SECRET, id, "oldlogin", 0, t, t + 600, t - 8 * 86_400);
    let a = post_anon(&s, "/auth/jwt/verify", json!({"token": old})).await;
    assert_eq!(a.status, StatusCode::OK, "still valid: {}", a.body);
    let a = post_anon(&s, "/auth/jwt/refresh", json!({"token": old})).await;
    assert_error(
        &a,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "refresh too old",
    );
    // A recent login refreshes.
    let recent = craft(SECRET, id, "oldlogin", 0, t, t + 600, t - 86_400);
    let a = post_anon(&s, "/auth/jwt/refresh", json!({"token": recent})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn bearer_and_jwt_prefixes_work_in_any_case() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "prefixes", None).await;
    for prefix in ["Bearer", "bearer", "BEARER", "bEaReR", "JWT", "jwt", "Jwt"] {
        let h = HeaderValue::from_str(&format!("{prefix} {token}")).unwrap();
        let a = s.send("GET", "/auth/users/me", Some(h), None).await;
        assert_eq!(a.status, StatusCode::OK, "{prefix}: {}", a.body);
        assert_eq!(a.body["id"], id);
    }
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_401_with_bearer_challenge() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "malformed", None).await;
    let a = s.send("GET", "/auth/users/me", None, None).await;
    assert_401(&a, "no header");
    let bad_values = vec![
        "".to_string(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        token.clone(),
        format!("Basic {token}"),
        format!("Token {token}"),
        format!("Bearer{token}"),
        "Bearer garbage".to_string(),
        "Bearer a.b.c".to_string(),
        format!("Bearer {token}x"),
    ];
    for v in bad_values {
        let h = HeaderValue::from_str(&v).unwrap();
        let a = s.send("GET", "/auth/users/me", Some(h), None).await;
        assert_401(&a, format!("header {v:.30?}"));
    }
    // The same on the other authenticated account routes.
    let a = post_anon(
        &s,
        "/auth/password",
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_401(&a, "password change without token");
    let a = delete_me(
        &s,
        "/auth/users/me",
        None,
        json!({"current_password": PASSWORD}),
    )
    .await;
    assert_401(&a, "delete without token");
    // Nothing happened.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn non_utf8_authorization_header_is_401_not_another_error() {
    let s = TestServer::start().await;
    registered(&s, "nonutf8", None).await;
    for raw in [&b"Bearer \xff\xfe"[..], b"\xe9\xe9 token", b"JWT \x80abc"] {
        let h = HeaderValue::from_bytes(raw).unwrap();
        let a = s.send("GET", "/auth/users/me", Some(h.clone()), None).await;
        assert_401(&a, format!("GET /auth/users/me {raw:?}"));
        let a = s
            .send(
                "POST",
                "/auth/password",
                Some(h),
                Some(
                    json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await;
        assert_401(&a, format!("POST /auth/password {raw:?}"));
    }
}
