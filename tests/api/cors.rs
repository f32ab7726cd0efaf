//! Browsers (CORS), as API.md's "Browsers (CORS)" describes it: preflights on every route,
//! the headers on every answer to an allowed origin (errors included), disallowed origins,
//! `--cors-origin none`, and the `Origin` check of WebSocket upgrades. A real Chromium runs
//! the same against the binary in `tests/browser/` (see `.ci/run`).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{binary_command, TestServer, PASSWORD};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::route_table::ROUTES;

const PAGE: &str = "http://app.example:5173";

/// A request with `headers`, through the typed client's raw escape hatch; answers status,
/// headers and the JSON body (`Null` when empty).
async fn request(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (StatusCode, HeaderMap, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let bytes = body.unwrap_or_default().into_bytes();
    let res = s.client().raw(method, path, bytes, headers).await;
    let res = res.expect("request");
    let text = String::from_utf8_lossy(&res.body);
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(text.is_empty() || !body.is_null(), "not JSON: {text}");
    (res.status, res.headers, body)
}

/// A preflight for `method` from `origin`.
async fn preflight(
    s: &TestServer,
    path: &str,
    origin: &str,
    method: &str,
) -> (StatusCode, HeaderMap, Value) {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", method),
        (
            "access-control-request-headers",
            "authorization,content-type,x-client-version",
        ),
    ];
    request(s, "OPTIONS", path, &headers, None).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The headers every answer to an allowed origin carries.
fn assert_cors(headers: &HeaderMap, allow: &str, what: &str) {
    assert_eq!(
        header(headers, "access-control-allow-origin"),
        Some(allow),
        "{what}"
    );
    let vary: Vec<_> = headers.get_all("vary").iter().collect();
    assert!(
        vary.iter().any(|v| v.to_str().unwrap().contains("origin")),
        "{what}: no Vary: Origin in {vary:?}"
    );
    assert_eq!(
        header(headers, "access-control-expose-headers"),
        Some(
            "retry-after, www-authenticate, location, upload-offset, upload-length, \
             upload-expires, tus-resumable, tus-version, tus-extension, tus-max-size, \
             content-range, etag"
        ),
        "{what}"
    );
}

fn assert_no_cors(headers: &HeaderMap, what: &str) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
    ] {
        assert!(headers.get(name).is_none(), "{what}: {name} is set");
    }
}

#[tokio::test]
async fn a_preflight_on_every_route_is_204_with_its_methods_without_a_token() {
    let s = TestServer::start().await;
    for route in ROUTES {
        let path = route
            .template
            .replace(":regId", "7")
            .replace(":deviceId", "2")
            .replace(":username", "alice")
            .replace(":id", "AAAAAAAAAAAAAAAAAAAAAA")
            .replace('*', "7");
        for path in [path.clone(), format!("{path}/")] {
            let (status, headers, body) = preflight(&s, &path, PAGE, route.methods[0]).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {body}");
            assert_eq!(body, Value::Null, "{path}");
            assert_cors(&headers, "*", &path);
            assert_eq!(
                header(&headers, "access-control-allow-methods"),
                Some(route.methods.join(", ").as_str()),
                "{path}"
            );
            assert_eq!(
                header(&headers, "access-control-allow-headers"),
                Some("authorization, content-type, x-client-version"),
                "{path}"
            );
            assert_eq!(
                header(&headers, "access-control-max-age"),
                Some("86400"),
                "{path}"
            );
        }
    }
    // Counted as what they are: OPTIONS answered 204 on the route's template, not a 405.
    let metrics = s.app.metrics.render(None, 0);
    for line in [
        r#"route="/messages/:regId",method="OPTIONS",status="204"} 2"#,
        r#"route="/prekeybundle/:username/:regId",method="OPTIONS",status="204"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(!metrics.contains("status=\"405\""), "{metrics}");
}

#[tokio::test]
async fn a_preflight_on_an_unknown_path_is_the_json_404_and_plain_options_stays_405() {
    let s = TestServer::start().await;
    for path in ["/no/such/route", "/messages/abc", "/messages/1/ws/x"] {
        let (status, headers, body) = preflight(&s, path, PAGE, "GET").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["code"], "not_found", "{path}");
        assert_cors(&headers, "*", path);
        assert!(headers.get("access-control-allow-methods").is_none());
    }
    // Not a preflight (no Access-Control-Request-Method): the known path's 405, as before.
    let (status, headers, body) =
        request(&s, "OPTIONS", "/auth/users/me", &[("origin", PAGE)], None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["code"], "method_not_allowed");
    assert_cors(&headers, "*", "plain OPTIONS");
}

#[tokio::test]
async fn every_answer_to_an_allowed_origin_carries_the_headers_errors_included() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-body-bytes", "2000"]).await;
    let o = [("origin", PAGE)];
    let (status, headers, _) = request(&s, "GET", "/health", &o, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_cors(&headers, "*", "200");

    let (status, headers, body) = request(&s, "GET", "/auth/users/me", &o, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "not_authenticated");
    assert!(header(&headers, "www-authenticate").is_some());
    assert_cors(&headers, "*", "401");

    let (status, headers, _) = request(&s, "GET", "/no/such/route", &o, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_cors(&headers, "*", "404");

    let (status, headers, _) = request(&s, "PUT", "/auth/users/me", &o, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_cors(&headers, "*", "405");

    let big = json!({"username": "x".repeat(3000), "password": PASSWORD}).to_string();
    let (status, headers, body) = request(&s, "POST", "/auth/users", &o, Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_cors(&headers, "*", "413");

    let (status, headers, _) = request(&s, "POST", "/auth/users", &o, Some("{".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_cors(&headers, "*", "400");
}

#[tokio::test]
async fn a_throttled_answer_carries_the_headers_and_a_readable_retry_after() {
    let s = TestServer::start_with(&[]).await;
    let body = json!({"username": "nobody", "password": "wrong-Password-1"}).to_string();
    let o = [("origin", PAGE)];
    for _ in 0..40 {
        let (status, headers, res) =
            request(&s, "POST", "/auth/jwt/create", &o, Some(body.clone())).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(res["code"], "throttled");
            assert!(header(&headers, "retry-after").is_some_and(|v| v.parse::<u64>().is_ok()));
            assert_cors(&headers, "*", "429");
            return;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{res}");
    }
    panic!("no 429 within 40 logins");
}

#[tokio::test]
async fn a_listed_origin_is_echoed_and_any_other_gets_no_cors_headers() {
    let s = TestServer::start_with(&[
        "--no-rate-limit",
        "--cors-origin",
        "HTTPS://Chat.Example.org:443",
        "--cors-origin",
        PAGE,
    ])
    .await;
    for origin in ["https://chat.example.org", PAGE] {
        let (status, headers, _) = request(&s, "GET", "/health", &[("origin", origin)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert_cors(&headers, origin, origin);
        let (status, headers, _) = preflight(&s, "/auth/users", origin, "POST").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_cors(&headers, origin, origin);
        assert_eq!(
            header(&headers, "access-control-allow-methods"),
            Some("POST")
        );
    }
    for origin in [
        "https://evil.example",
        "http://chat.example.org",
        "https://chat.example.org:8443",
        "null",
    ] {
        let (status, headers, _) = request(&s, "GET", "/health", &[("origin", origin)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert_no_cors(&headers, origin);
        let (status, headers, _) =
            request(&s, "GET", "/auth/users/me", &[("origin", origin)], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_no_cors(&headers, origin);
        let (status, headers, _) = preflight(&s, "/auth/users", origin, "POST").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{origin}");
        assert_no_cors(&headers, origin);
    }
    // No Origin (not a browser): nothing to allow.
    let (_, headers, _) = request(&s, "GET", "/health", &[], None).await;
    assert_no_cors(&headers, "no Origin");
}

#[tokio::test]
async fn cors_origin_none_turns_cors_off() {
    let s = TestServer::start_with(&["--no-rate-limit", "--cors-origin", "none"]).await;
    let (status, headers, body) = preflight(&s, "/auth/users", PAGE, "POST").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_no_cors(&headers, "preflight");
    let (status, headers, _) = request(&s, "GET", "/health", &[("origin", PAGE)], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_cors(&headers, "GET");
    assert!(headers.get("vary").is_none());
}

#[tokio::test]
async fn websocket_upgrades_check_the_origin() {
    let s = TestServer::start_with(&["--no-rate-limit", "--cors-origin", PAGE]).await;
    let u = s.user_with_device("wsorigin", 31, 0, 0).await;
    let path = format!("/messages/31/ws?token={}", u.token);
    let host = s.base.trim_start_matches("http://").to_string();
    let same_host = format!("http://{host}");
    for origin in [None, Some(PAGE), Some(same_host.as_str())] {
        let (status, _) = crate::helpers::ws_status(&s, &path, origin).await;
        assert_eq!(status, 101, "Origin {origin:?}");
    }
    for origin in ["https://evil.example", "null"] {
        let (status, body) = crate::helpers::ws_status(&s, &path, Some(origin)).await;
        assert_eq!(status, 403, "Origin {origin}");
        assert_eq!(body["code"], "origin_not_allowed");
    }
    // Refused before authentication: a bad token from a bad origin is still the 403.
    let (status, _) =
        crate::helpers::ws_status(&s, "/messages/31/ws?token=x", Some("https://evil.example"))
            .await;
    assert_eq!(status, 403);

    let off = TestServer::start_with(&["--no-rate-limit", "--cors-origin", "none"]).await;
    let v = off.user_with_device("wsoff", 32, 0, 0).await;
    let path = format!("/messages/32/ws?token={}", v.token);
    let (status, _) = crate::helpers::ws_status(&off, &path, Some(PAGE)).await;
    assert_eq!(status, 403, "with none, a cross-origin page is refused");
    let (status, _) = crate::helpers::ws_status(&off, &path, None).await;
    assert_eq!(status, 101);
}

#[test]
fn an_origin_with_a_path_or_no_scheme_stops_the_start_with_a_clear_error() {
    for (value, why) in [
        ("https://chat.example.org/", "trailing /"),
        ("https://chat.example.org/app", "path"),
        ("chat.example.org", "no scheme://"),
        ("https://a.example,*", "stand alone"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = binary_command(dir.path())
            .args(["--listen", "127.0.0.1:0", "--cors-origin", value])
            .output()
            .expect("run signal-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value}: {stderr}");
        assert!(
            stderr.contains("--cors-origin") && stderr.contains(why),
            "{value}: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_environment_variable_takes_a_comma_separated_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = binary_command(dir.path())
        .env(
            "SIGNAL_SERVER_CORS_ORIGIN",
            "https://a.example, https://b.example",
        )
        .args(["--listen", "127.0.0.1:0", "--no-rate-limit"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn signal-server");
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| Some(l.split("listening on ").nth(1)?.trim().to_string()))
    });
    let base = match tokio::time::timeout(Duration::from_secs(30), line).await {
        Ok(Ok(Some(base))) => base,
        other => {
            let _ = child.kill();
            panic!("no `listening on` line: {other:?}");
        }
    };
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    for origin in ["https://b.example", "https://c.example"] {
        let res = http
            .get(format!("{base}/health"))
            .header("origin", origin)
            .send()
            .await;
        seen.push(res.map(|r| r.headers().get("access-control-allow-origin").cloned()));
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen: Vec<_> = seen.into_iter().map(|r| r.expect("request")).collect();
    assert_eq!(
        seen[0].as_ref().map(|v| v.to_str().unwrap()),
        Some("https://b.example")
    );
    assert_eq!(seen[1], None);
}
