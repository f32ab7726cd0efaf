//! Hostile bodies on every account route: malformed JSON, wrong shapes and types, huge strings,
//! bodies over the limit, chunked bodies.

use std::time::Duration;

use super::*;
use crate::helpers::{assert_error, assert_invalid, bearer, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every account route that takes a body: (method, path, needs a token).
const BODY_ROUTES: [(&str, &str, bool); 8] = [
    ("POST", "/auth/users", false),
    ("POST", "/auth/jwt/create", false),
    ("POST", "/auth/jwt/refresh", false),
    ("POST", "/auth/jwt/verify", false),
    ("POST", "/auth/password/reset", false),
    ("POST", "/auth/password/reset/confirm", false),
    ("POST", "/auth/password", true),
    ("DELETE", "/auth/users/me", true),
];

#[tokio::test]
async fn malformed_json_is_400_malformed_json_on_every_account_route() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "hostile", None).await;
    let deep = "[".repeat(100_000);
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"username\":".to_vec(),
        b"{username: 'x'}".to_vec(),
        b"not json at all".to_vec(),
        b"".to_vec(),
        b"{\"a\":1}}".to_vec(),
        vec![0xff, 0xfe, b'{', b'}'],
        deep.into_bytes(),
    ];
    for (method, path, auth) in BODY_ROUTES {
        for body in &bodies {
            let a = s
                .send(
                    method,
                    path,
                    if auth { bearer(&token) } else { None },
                    Some(body.clone()),
                )
                .await;
            assert_error(
                &a,
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("{method} {path} {:.20?}", String::from_utf8_lossy(body)),
            );
        }
    }
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_top_level_shapes_are_403_incorrect_arguments_on_every_account_route() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "shapes", None).await;
    let shapes = [
        json!([]),
        json!([{"username": "x", "password": PASSWORD}]),
        json!({}),
        json!("a string"),
        json!(42),
        json!(true),
        json!(null),
    ];
    for (method, path, auth) in BODY_ROUTES {
        for shape in &shapes {
            let a = s
                .send(
                    method,
                    path,
                    if auth { bearer(&token) } else { None },
                    Some(shape.to_string().into_bytes()),
                )
                .await;
            assert_error(
                &a,
                StatusCode::FORBIDDEN,
                "incorrect_arguments",
                format!("{method} {path} {shape}"),
            );
        }
    }
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_field_types_are_400_invalid_data_naming_the_field() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "typist", None).await;
    let wrong = [
        json!(123),
        json!(1.5),
        json!(["x"]),
        json!({"a": 1}),
        json!(true),
    ];
    for w in &wrong {
        let cases = [
            (
                "/auth/users",
                json!({"username": w, "password": PASSWORD}),
                "username",
                None,
            ),
            (
                "/auth/users",
                json!({"username": "typed", "password": w}),
                "password",
                None,
            ),
            (
                "/auth/users",
                json!({"username": "typed", "password": PASSWORD, "email": w}),
                "email",
                None,
            ),
            (
                "/auth/jwt/create",
                json!({"username": w, "password": PASSWORD}),
                "username",
                None,
            ),
            (
                "/auth/jwt/create",
                json!({"username": "typist", "password": w}),
                "password",
                None,
            ),
            ("/auth/jwt/verify", json!({"token": w}), "token", None),
            ("/auth/jwt/refresh", json!({"token": w}), "token", None),
            ("/auth/password/reset", json!({"email": w}), "email", None),
            (
                "/auth/password/reset/confirm",
                json!({"uid": "MQ", "token": w, "new_password": NEW_PASSWORD}),
                "token",
                None,
            ),
            (
                "/auth/password",
                json!({"current_password": w, "new_password": NEW_PASSWORD}),
                "current_password",
                Some(token.as_str()),
            ),
            (
                "/auth/password",
                json!({"current_password": PASSWORD, "new_password": w}),
                "new_password",
                Some(token.as_str()),
            ),
        ];
        for (path, body, field, tok) in cases {
            let a = post_json(&s, path, tok, body.clone()).await;
            assert_invalid(&a, field, format!("{path} {body}"));
        }
    }
    // Nothing was created or changed.
    assert_error(
        &login(&s, "typed", PASSWORD).await,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "typed",
    );
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_extra_fields_are_ignored() {
    let s = TestServer::start().await;
    let a = post_anon(
        &s,
        "/auth/users",
        json!({"username": "extra", "password": PASSWORD, "is_admin": true, "id": 1,
               "nested": {"x": [1, 2]}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.body.get("is_admin").is_none());
    let l = post_anon(
        &s,
        "/auth/jwt/create",
        json!({"username": "extra", "password": PASSWORD, "otp": "123456"}),
    )
    .await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.body);
    let token = l.body["token"].as_str().unwrap().to_string();
    let v = post_anon(&s, "/auth/jwt/verify", json!({"token": token, "extra": 1})).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
    let p = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": "x"}),
    )
    .await;
    assert_eq!(p.status, StatusCode::NO_CONTENT, "{}", p.body);
}

#[tokio::test]
async fn huge_strings_are_400_invalid_data() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "huge", None).await;
    let a = register(&s, &"u".repeat(200), PASSWORD, None).await;
    assert_invalid(&a, "username", "200-char username");
    let a = register(&s, &"u".repeat(100_000), PASSWORD, None).await;
    assert_invalid(&a, "username", "100 kB username");
    let big_password: String = "Zq9!xW".repeat(17_000); // ~100 kB
    let a = register(&s, "hugepass", &big_password, None).await;
    assert_invalid(&a, "password", "100 kB password");
    let a = register(
        &s,
        "hugemail",
        PASSWORD,
        Some(&format!("{}@x.org", "m".repeat(100_000))),
    )
    .await;
    assert_invalid(&a, "email", "100 kB email");
    let a = change_password(&s, &token, PASSWORD, &big_password).await;
    assert_invalid(&a, "new_password", "100 kB new password");
    // A huge login is just a failed login, never a server error.
    let a = login(&s, &"u".repeat(100_000), &big_password).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(
        a.body["code"] == "invalid_credentials" || a.body["code"] == "invalid_data",
        "{}",
        a.body
    );
    assert_eq!(login(&s, "huge", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-body-bytes", "2048"]).await;
    let (_, token) = registered(&s, "bigbody", None).await;
    let big = json!({"username": "x".repeat(4096), "password": PASSWORD});
    for (method, path, auth) in BODY_ROUTES {
        let a = s
            .send(
                method,
                path,
                if auth { bearer(&token) } else { None },
                Some(big.to_string().into_bytes()),
            )
            .await;
        assert_error(
            &a,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{method} {path}"),
        );
    }
    // Just under the limit is fine (and fails only on its own rules).
    let padded = json!({"username": "smallbody", "password": PASSWORD, "pad": "p".repeat(1900)});
    assert!(padded.to_string().len() <= 2048);
    let a = post_anon(&s, "/auth/users", padded).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn chunked_bodies_are_read_up_to_the_limit() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-body-bytes", "2048"]).await;
    // A small chunked body works.
    let body = json!({"username": "chunky", "password": PASSWORD}).to_string();
    let (head, tail) = body.split_at(10);
    let (status, text) = chunked_request(&s, "/auth/users", vec![head.into(), tail.into()]).await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["username"], "chunky");

    // Over the limit: 413.
    let mut chunks = vec![b"{\"username\":\"".to_vec()];
    chunks.extend((0..8).map(|_| vec![b'a'; 1024]));
    chunks.push(format!("\",\"password\":\"{PASSWORD}\"}}").into_bytes());
    let (status, text) = chunked_request(&s, "/auth/users", chunks).await;
    assert_eq!(status, 413, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["code"], "payload_too_large");
}

/// A raw HTTP/1.1 request with a chunked body, over its own TCP connection. Answers the status
/// and the body text.
async fn chunked_request(s: &TestServer, path: &str, chunks: Vec<Vec<u8>>) -> (u16, String) {
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    for chunk in chunks {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer and stop reading before the end: write errors are expected.
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if response_complete(&raw) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let body = match content_length(head) {
        Some(n) => body.get(..n).unwrap_or(body).to_string(),
        None => body.to_string(),
    };
    (status, body)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) => content_length(head).is_some_and(|n| body.len() >= n),
        None => false,
    }
}
