//! The per-IP limit of anonymous routes and `X-Forwarded-For`: a header from an untrusted peer
//! does not dodge the limit, and behind a trusted proxy each client has its own budget.

use std::time::Instant;

use super::{assert_error, register};
use crate::helpers::{stop_closed, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A failed login (an anonymous route), optionally with `X-Forwarded-For`: the status, and
/// whether a 429 carried `Retry-After`.
async fn anonymous_attempt(s: &TestServer, forwarded: Option<&str>) -> StatusCode {
    let mut req = s
        .http
        .post(s.url("/auth/jwt/create"))
        .json(&json!({"username": "nobody-here", "password": "Wrong-password-123"}));
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry.is_some_and(|r| r >= 1),
            "429 without Retry-After: {:?}",
            res.headers()
        );
        let body: Value = res.json().await.expect("JSON");
        assert_eq!(body["code"], "throttled", "{body}");
    } else {
        let body: Value = res.json().await.expect("JSON");
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
        );
    }
    status
}

/// Uses up the burst of 20 (every one of them answered normally), then sends until refused.
/// Answers when the budget was seen empty.
async fn exhaust(s: &TestServer, forwarded: Option<&str>) -> Instant {
    for n in 0..20 {
        let status = anonymous_attempt(s, forwarded).await;
        assert_ne!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "attempt {} of the burst of 20 was throttled ({forwarded:?})",
            n + 1
        );
    }
    for _ in 0..100 {
        if anonymous_attempt(s, forwarded).await == StatusCode::TOO_MANY_REQUESTS {
            return Instant::now();
        }
    }
    panic!("120 attempts ({forwarded:?}) and never throttled");
}

/// At most this many requests may pass once a budget was seen empty at `empty` (one refill
/// every 6 s, plus one for a refill already under way): a bound that no slow machine breaks.
fn refills_since(empty: Instant) -> usize {
    empty.elapsed().as_secs() as usize / 6 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_from_an_untrusted_peer_does_not_dodge_the_per_ip_limit() {
    let s = TestServer::start_with(&[]).await;
    let empty = exhaust(&s, None).await;
    let mut passed = 0;
    let tries = 12;
    for i in 0..tries {
        let forwarded = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        if anonymous_attempt(&s, Some(&forwarded)).await != StatusCode::TOO_MANY_REQUESTS {
            passed += 1;
        }
    }
    // Registration and password reset share the budget.
    let (status, body) = register(&s, json!({"username": "late", "password": PASSWORD})).await;
    if status != StatusCode::TOO_MANY_REQUESTS {
        passed += 1;
    } else {
        assert_eq!(body["code"], "throttled");
    }
    let allowed = refills_since(empty);
    assert!(
        passed <= allowed,
        "{passed} of {} requests with spoofed X-Forwarded-For passed; at most {allowed} could \
         have refilled",
        tries + 1
    );
    stop_closed(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_from_a_trusted_proxy_gives_each_client_its_own_budget() {
    let s = TestServer::start_with(&["--trusted-proxy", "127.0.0.1"]).await;
    let empty = exhaust(&s, Some("10.0.0.1")).await;
    // Another client behind the proxy, and the proxy itself, have their own budgets.
    assert_ne!(
        anonymous_attempt(&s, Some("10.0.0.2")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a new client behind the trusted proxy was throttled"
    );
    assert_ne!(
        anonymous_attempt(&s, None).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the proxy's own address shares a client's budget"
    );
    // The hop the proxy appended counts, not what the client put in front of it.
    let mut passed = 0;
    let tries = 12;
    for i in 0..tries {
        let chain = format!("192.0.2.{}, 10.0.0.1", i + 1);
        if anonymous_attempt(&s, Some(&chain)).await != StatusCode::TOO_MANY_REQUESTS {
            passed += 1;
        }
    }
    let allowed = refills_since(empty);
    assert!(
        passed <= allowed,
        "{passed} of {tries} requests with a forged first hop passed; at most {allowed} could \
         have refilled"
    );
    stop_closed(s).await;
}
