//! The anonymous rate limit: a burst of 20 per IP, shared by register, login and reset.

use std::time::Instant;

use super::*;
use crate::helpers::{assert_error, assert_throttled, TestServer, PASSWORD};
use reqwest::StatusCode;

#[tokio::test]
async fn anonymous_routes_are_throttled_per_ip_after_a_burst_of_20() {
    let s = TestServer::start_with(&[]).await;
    let started = Instant::now();
    let mut token = None;
    for i in 0..20 {
        let a = if i % 2 == 0 {
            register(&s, &format!("burst{i}"), PASSWORD, None).await
        } else {
            login(&s, &format!("burst{}", i - 1), PASSWORD).await
        };
        assert_ne!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "attempt {} is within the burst: {}",
            i + 1,
            a.body
        );
        if let Some(t) = a.body["token"].as_str() {
            token = Some(t.to_string());
        }
    }
    // The budget refills one request every 6 s; allow for a slow machine.
    let refilled = (started.elapsed().as_secs() / 6) as usize;
    let mut throttled = None;
    for attempt in 0..=refilled + 1 {
        let a = login(&s, "burst0", PASSWORD).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(a);
            break;
        }
        assert!(
            attempt <= refilled,
            "not throttled after the burst: {}",
            a.body
        );
    }
    let a = throttled.expect("a 429 after 20 anonymous attempts");
    assert_throttled(&a, "21st attempt");
    // Registration and reset share the same budget.
    let r = register(&s, "afterburst", PASSWORD, None).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "throttled", "register");
    let r = reset(&s, "a@b.org").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "throttled", "reset");
    // Authenticated routes are not affected.
    let token = token.expect("a login within the burst");
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}
