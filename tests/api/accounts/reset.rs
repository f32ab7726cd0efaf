//! Password reset: `POST /auth/password/reset` mails a single-use token, `.../confirm` spends it.

use std::time::Duration;

use super::mail::{next_mail, reset_fields, smtp_app};
use super::*;
use crate::helpers::{assert_401, assert_error, assert_invalid, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn password_reset_mails_a_single_use_token_that_sets_a_new_password() {
    let (s, mut mails) = smtp_app().await;
    let (id, old_token) = registered(&s, "Forgetful", Some("Forgetful.One@Example.org")).await;

    let a = reset(&s, "forgetful.one@example.org").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);

    let mail = next_mail(&mut mails).await;
    assert_eq!(
        mail.from, "noreply@signal.test",
        "envelope sender is --smtp-from"
    );
    assert_eq!(
        mail.to.iter().map(|t| t.to_lowercase()).collect::<Vec<_>>(),
        vec!["forgetful.one@example.org".to_string()],
        "mailed to the account's address"
    );
    let (uid, token) = reset_fields(&mail);
    assert!(!token.is_empty());
    assert_eq!(uid, uid_of(id), "uid encodes the user id");
    assert!(
        !mail.data.contains(PASSWORD),
        "the mail does not carry the password"
    );

    // A wrong token does not work (and does not burn the right one).
    let a = confirm(&s, &uid, format!("{token}x"), NEW_PASSWORD).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_token", "wrong token");
    assert_eq!(me(&s, &old_token).await.status, StatusCode::OK);

    let a = confirm(&s, &uid, &token, NEW_PASSWORD).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(a.body, Value::Null);

    // Single use.
    let a = confirm(&s, &uid, &token, "Another-Fresh-Pass-31").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_token", "token reused");

    // Old tokens revoked; the new password (not the old, not the refused one) logs in.
    assert_401(&me(&s, &old_token).await, "old token after reset");
    let l = login(&s, "forgetful", PASSWORD).await;
    assert_error(
        &l,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "old password",
    );
    let l = login(&s, "forgetful", "Another-Fresh-Pass-31").await;
    assert_error(
        &l,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "reused-token password",
    );
    let l = login(&s, "forgetful", NEW_PASSWORD).await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.body);
    let m = me(&s, l.body["token"].as_str().unwrap()).await;
    assert_eq!(m.body["id"], id);
}

#[tokio::test]
async fn password_reset_confirm_refuses_a_weak_new_password() {
    let (s, mut mails) = smtp_app().await;
    let (_, old_token) = registered(&s, "weakreset", Some("weakreset@example.org")).await;
    let a = reset(&s, "weakreset@example.org").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let (uid, token) = reset_fields(&next_mail(&mut mails).await);
    for weak in ["short", "password123", "99999999999", "weakreset1"] {
        let a = confirm(&s, &uid, &token, weak).await;
        assert_invalid(&a, "new_password", format!("weak {weak}"));
    }
    // The password did not change and tokens still work.
    assert_eq!(
        login(&s, "weakreset", PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(me(&s, &old_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn password_reset_for_an_unknown_email_is_204_and_sends_no_mail() {
    let (s, mut mails) = smtp_app().await;
    registered(&s, "known", Some("known@example.org")).await;
    let unknown = reset(&s, "stranger@example.org").await;
    assert_eq!(unknown.status, StatusCode::NO_CONTENT, "{}", unknown.body);
    let known = reset(&s, "known@example.org").await;
    assert_eq!(known.status, StatusCode::NO_CONTENT);
    assert_eq!(unknown.body, known.body, "indistinguishable answers");
    assert_eq!(
        unknown.headers.get("content-length"),
        known.headers.get("content-length")
    );

    // The known address's mail arrives; nothing is ever addressed to the stranger.
    let mut received = vec![next_mail(&mut mails).await];
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(m) = mails.try_recv() {
        received.push(m);
    }
    assert_eq!(received.len(), 1, "exactly one mail: {received:?}");
    assert_eq!(received[0].to, vec!["known@example.org".to_string()]);
}

#[tokio::test]
async fn password_reset_without_smtp_still_answers_204() {
    let s = TestServer::start().await;
    registered(&s, "nosmtp", Some("nosmtp@example.org")).await;
    for email in ["nosmtp@example.org", "unknown@example.org"] {
        let a = reset(&s, email).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{email}: {}", a.body);
    }
    // The account is untouched.
    assert_eq!(login(&s, "nosmtp", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn password_reset_refuses_a_malformed_email() {
    let s = TestServer::start().await;
    let long = format!("{}@example.org", "x".repeat(300));
    for bad in [
        "not-an-email",
        "a@",
        "@b.org",
        "",
        "two@@x.org",
        long.as_str(),
    ] {
        let a = reset(&s, bad).await;
        assert_invalid(&a, "email", format!("email {bad:.30?}"));
    }
    for bad in [
        json!({"email": 42}),
        json!({"email": ["a@b.org"]}),
        json!({"mail": "a@b.org"}),
    ] {
        let a = post_anon(&s, "/auth/password/reset", bad.clone()).await;
        assert_invalid(&a, "email", format!("{bad}"));
    }
}

#[tokio::test]
async fn password_reset_confirm_refuses_wrong_tokens_and_bad_fields() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "confirmer", Some("confirmer@example.org")).await;
    let a = reset(&s, "confirmer@example.org").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    for wrong in ["wrong-token", "", "x", &token] {
        let a = confirm(&s, uid_of(id), &wrong, NEW_PASSWORD).await;
        assert_error(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_token",
            format!("token {wrong:.20?}"),
        );
    }
    // An unknown or undecodable uid: the same 400 `invalid_token` as a bad token, so uids
    // cannot be enumerated.
    for uid in [uid_of(id + 1000), "!!!".to_string(), "".to_string()] {
        let a = confirm(&s, &uid, "whatever", NEW_PASSWORD).await;
        assert_error(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_token",
            format!("uid {uid:?}"),
        );
    }
    let a = post_anon(
        &s,
        "/auth/password/reset/confirm",
        json!({"uid": uid_of(id), "token": "t"}),
    )
    .await;
    assert_invalid(&a, "new_password", "missing new_password");
    let a = confirm(&s, 5, "t", NEW_PASSWORD).await;
    assert_invalid(&a, "uid", "numeric uid");
    // Nothing changed.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
    assert_eq!(
        login(&s, "confirmer", PASSWORD).await.status,
        StatusCode::OK
    );
}
