//! `POST /auth/users`: who may register, with which username, email and password.

use super::*;
use crate::helpers::{assert_error, assert_invalid, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn register_answers_201_with_email_username_as_given_and_integer_id() {
    let s = TestServer::start().await;
    let a = register(&s, "MiXeD.Case+x@y-z_1", PASSWORD, None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["username"], "MiXeD.Case+x@y-z_1");
    assert_eq!(a.body["email"], "", "no email → empty string");
    assert!(a.body["id"].is_u64(), "{}", a.body);
    let obj = a.body.as_object().unwrap();
    assert_eq!(obj.len(), 3, "exactly email, username, id: {}", a.body);

    let b = register(&s, "withmail", PASSWORD, Some("With.Mail@Example.org")).await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(b.body["email"], "With.Mail@Example.org");
    assert_eq!(b.body["username"], "withmail");
    assert_ne!(a.body["id"], b.body["id"], "ids are distinct");
}

#[tokio::test]
async fn register_accepts_every_allowed_username_character_and_150_chars() {
    let s = TestServer::start().await;
    for name in [
        "a",
        "Z",
        "0",
        "user@host",
        "first.last",
        "plus+tag",
        "dash-ed",
        "under_score",
        "AZaz09@.+-_",
    ] {
        let a = register(&s, name, PASSWORD, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{name}: {}", a.body);
        assert_eq!(a.body["username"], name);
    }
    let long = "L".repeat(150);
    let a = register(&s, &long, PASSWORD, None).await;
    assert_eq!(a.status, StatusCode::CREATED, "150 chars: {}", a.body);
    assert_eq!(a.body["username"], long.as_str());
}

#[tokio::test]
async fn register_refuses_invalid_usernames_naming_the_field() {
    let s = TestServer::start().await;
    let long = "x".repeat(151);
    for name in [
        "",
        long.as_str(),
        "has space",
        "slash/name",
        "colon:name",
        "ünïcode",
        "tab\tname",
        "semi;colon",
        "quote\"name",
        "new\nline",
    ] {
        let a = register(&s, name, PASSWORD, None).await;
        assert_invalid(&a, "username", format!("username {name:?}"));
    }
}

#[tokio::test]
async fn register_refuses_a_username_taken_in_any_case() {
    let s = TestServer::start().await;
    assert_eq!(
        register(&s, "Taken_Name", PASSWORD, None).await.status,
        StatusCode::CREATED
    );
    for dup in ["Taken_Name", "taken_name", "TAKEN_NAME", "tAkEn_NaMe"] {
        let a = register(&s, dup, PASSWORD, None).await;
        assert_invalid(&a, "username", format!("duplicate {dup}"));
    }
}

#[tokio::test]
async fn register_email_is_optional_validated_and_unique_case_insensitively() {
    let s = TestServer::start().await;
    // Two users without email may coexist; so may an explicit empty email.
    for name in ["nomail1", "nomail2"] {
        let a = register(&s, name, PASSWORD, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let a = register(&s, "emptymail", PASSWORD, Some("")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["email"], "");

    for bad in [
        "not-an-email",
        "missing-at.example.org",
        "two@@example.org",
        "@example.org",
        "spaces in@example.org",
    ] {
        let a = register(&s, "badmail", PASSWORD, Some(bad)).await;
        assert_invalid(&a, "email", format!("email {bad:?}"));
    }
    let long = format!("{}@example.org", "e".repeat(300));
    assert_invalid(
        &register(&s, "badmail", PASSWORD, Some(&long)).await,
        "email",
        "300-char email",
    );

    let a = register(&s, "mailowner", PASSWORD, Some("Owner@Example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    for dup in [
        "Owner@Example.org",
        "owner@example.org",
        "OWNER@EXAMPLE.ORG",
    ] {
        let a = register(&s, "mailthief", PASSWORD, Some(dup)).await;
        assert_invalid(&a, "email", format!("duplicate email {dup}"));
    }
    // None of the refused registrations created the account.
    let a = register(&s, "mailthief", PASSWORD, Some("thief@example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

#[tokio::test]
async fn register_refuses_control_and_direction_characters_in_the_email() {
    let s = TestServer::start().await;
    // A tab or newline would break the columns of `users list` and the lines of the log; the
    // line separators and direction overrides would reorder what an operator reads.
    for bad in [
        "tab\t@example.org",
        "\"quoted\ttab\"@example.org",
        "tab@exam\tple.org",
        "new\nline@example.org",
        "nul\u{0}@example.org",
        "del\u{7f}@example.org",
        "sep\u{2028}@example.org",
        "rlo\u{202e}gro.elpmaxe@x.org",
        "iso\u{2066}@example.org",
    ] {
        let a = register(&s, "ctrlmail", PASSWORD, Some(bad)).await;
        assert_invalid(&a, "email", format!("email {bad:?}"));
    }
    // Nothing was stored: the name is still free.
    let a = register(&s, "ctrlmail", PASSWORD, Some("ctrl@example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

#[tokio::test]
async fn register_refuses_weak_passwords_naming_the_password_field() {
    let s = TestServer::start().await;
    let cases: [(&str, &str, Option<&str>, &str); 8] = [
        ("weak1", "Sh0rt!x", None, "7 chars"),
        ("weak2", "", None, "empty"),
        ("weak3", "84736291057", None, "all digits"),
        ("weak4", "password123", None, "common"),
        ("weak5", "password", None, "common"),
        ("weak6", "qwertyuiop", None, "common keyboard walk"),
        (
            "marmalade_fox",
            "marmalade_fox1",
            None,
            "close to the username",
        ),
        (
            "weak8",
            "quintessa.vorhees",
            Some("quintessa.vorhees@example.org"),
            "close to the email",
        ),
    ];
    for (user, password, email, what) in cases {
        let a = register(&s, user, password, email).await;
        assert_invalid(&a, "password", what);
        assert!(
            a.body["errors"].get("username").is_none(),
            "{what}: only the password is wrong: {}",
            a.body
        );
        // Nothing was stored: the username is still free.
        let l = login(&s, user, password).await;
        assert_error(
            &l,
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            format!("{what}: no account"),
        );
    }
    let a = register(&s, "marmalade_fox", PASSWORD, None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

#[tokio::test]
async fn register_reports_every_bad_field_together() {
    let s = TestServer::start().await;
    let a = post_anon(
        &s,
        "/auth/users",
        json!({"username": "bad name", "password": "123", "email": "nope"}),
    )
    .await;
    assert_invalid(&a, "username", "all bad");
    assert_invalid(&a, "email", "all bad");
    let a = post_anon(&s, "/auth/users", json!({"email": "a@b.org"})).await;
    assert_invalid(&a, "username", "missing username");
    assert_invalid(&a, "password", "missing password");
}
