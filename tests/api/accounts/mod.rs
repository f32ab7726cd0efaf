//! Accounts over real HTTP, as docs/API.md's "Accounts" describes them: registration, login and
//! tokens, the Authorization header, the caller's own account, password change and reset,
//! hostile bodies, trailing slashes and the anonymous rate limit. The helpers here are the
//! account calls every module of the area makes.

mod account;
mod hostile;
mod mail;
mod password;
mod register;
mod reset;
mod throttle;
mod tokens;
mod trailing_slash;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::helpers::{bearer, Answer, TestServer, PASSWORD};
use base64::Engine;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

const SECRET: &str = "users-test-secret-0123456789-abcdefghijkl";
const NEW_PASSWORD: &str = "Lighthouse-Quartz-917";

/// POST `body` (as JSON) to `path`, with a bearer token when given.
async fn post_json(s: &TestServer, path: &str, token: Option<&str>, body: Value) -> Answer {
    let body = Some(body.to_string().into_bytes());
    s.send("POST", path, token.and_then(bearer), body).await
}

/// POST `body` (as JSON) to `path` without a token.
async fn post_anon(s: &TestServer, path: &str, body: Value) -> Answer {
    post_json(s, path, None, body).await
}

/// `POST /auth/password` as the holder of `token`.
async fn change_password(s: &TestServer, token: &str, current: &str, new: &str) -> Answer {
    let body = json!({"current_password": current, "new_password": new});
    post_json(s, "/auth/password", Some(token), body).await
}

/// `POST /auth/password/reset` for `email`.
async fn reset(s: &TestServer, email: &str) -> Answer {
    post_anon(s, "/auth/password/reset", json!({"email": email})).await
}

/// `POST /auth/password/reset/confirm` with a reset mail's `uid` and `token`.
async fn confirm(
    s: &TestServer,
    uid: impl Serialize,
    token: impl Serialize,
    new_password: &str,
) -> Answer {
    let body = json!({"uid": uid, "token": token, "new_password": new_password});
    post_anon(s, "/auth/password/reset/confirm", body).await
}

/// DELETE `path` (`/auth/users/me`, with or without the slash) with `body`.
async fn delete_me(
    s: &TestServer,
    path: &str,
    authorization: Option<HeaderValue>,
    body: Value,
) -> Answer {
    let body = Some(body.to_string().into_bytes());
    s.send("DELETE", path, authorization, body).await
}

async fn register(s: &TestServer, username: &str, password: &str, email: Option<&str>) -> Answer {
    let mut body = json!({"username": username, "password": password});
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    post_anon(s, "/auth/users", body).await
}

async fn login(s: &TestServer, username: &str, password: &str) -> Answer {
    let body = json!({"username": username, "password": password});
    post_anon(s, "/auth/jwt/create", body).await
}

async fn me(s: &TestServer, token: &str) -> Answer {
    s.send("GET", "/auth/users/me", bearer(token), None).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `secret` (HS256) carrying the server's claims.
fn craft(secret: &str, id: u64, username: &str, ver: u32, iat: u64, exp: u64, orig: u64) -> String {
    let claims = json!({
        "sub": id.to_string(), "username": username, "ver": ver,
        "iat": iat, "exp": exp, "orig_iat": orig,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// An unsigned `alg: none` token with valid-looking claims.
fn alg_none(id: u64, username: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = e.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let t = now();
    let claims = json!({
        "sub": id.to_string(), "username": username, "ver": 0,
        "iat": t, "exp": t + 3600, "orig_iat": t,
    });
    format!("{header}.{}.", e.encode(claims.to_string()))
}

/// The `uid` of a reset mail for a user id (base64url of the decimal id, no padding).
fn uid_of(id: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_string())
}

async fn registered(s: &TestServer, username: &str, email: Option<&str>) -> (u64, String) {
    let a = register(s, username, PASSWORD, email).await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "register {username}: {}",
        a.body
    );
    let id = a.body["id"].as_u64().expect("id");
    let l = login(s, username, PASSWORD).await;
    assert_eq!(l.status, StatusCode::OK, "login {username}: {}", l.body);
    (id, l.body["token"].as_str().unwrap().to_string())
}
