//! Metrics: the Prometheus endpoint (its own listener, never the public API) with route
//! templates instead of raw paths, histograms that agree with the counters, gauges that follow
//! the data; the binary's `--metrics-listen` address in its log; and the access log (one line per
//! request, never a secret).

use super::prometheus::{requests_by_route, scrape, Exposition, ROUTE_TEMPLATES};
use super::{assert_error, pop_bundle, serve_metrics};
use crate::helpers::{
    binary_command, deliver, message_ids, read_backlog, serve_flags, stop_closed, ws_open, Binary,
    TestServer, TestUser, Ws, BINARY_BOUND,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A server with its metrics listener after known traffic: alicemetrics (device 4111, 5 EC and
/// 3 Kyber one-time keys) and bobmetrics (4222, 4 and 2); one bundle of bob popped, three
/// messages to bob and one to alice, bob's queue read twice, two 404s (one of them `/metrics` on
/// the public API, which does not serve it), and alice's live socket open.
struct Metered {
    s: TestServer,
    metrics_url: String,
    metrics: tokio::task::JoinHandle<()>,
    alice: TestUser,
    bob: TestUser,
    ws: Ws,
}

async fn metered() -> Metered {
    let s = TestServer::start().await;
    let (metrics_url, metrics) = serve_metrics(&s).await;

    let (status, body) = s.call("GET", "/metrics", None, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let alice = s.user_with_device("alicemetrics", 4111, 5, 3).await;
    let bob = s.user_with_device("bobmetrics", 4222, 4, 2).await;
    pop_bundle(&s, &alice, &bob).await;
    for i in 0..3 {
        deliver(&s, &alice, &bob, &format!("m{i}")).await;
    }
    deliver(&s, &bob, &alice, "back").await;
    for _ in 0..2 {
        let (status, _) = s
            .get(&format!("/messages/{}", bob.reg_id), &bob.token)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let nope = format!("/nope/{}/{}", alice.username, alice.reg_id);
    let (status, _) = s.call("GET", &nope, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // One live WebSocket, registered once the backlog has been sent.
    let mut ws = ws_open(&s, &alice).await;
    read_backlog(&mut ws).await;
    Metered {
        s,
        metrics_url,
        metrics,
        alice,
        bob,
        ws,
    }
}

impl Metered {
    async fn scrape(&self) -> Exposition {
        scrape(&self.s.http, &self.metrics_url).await
    }

    async fn stop(self) {
        self.metrics.abort();
        stop_closed(self.s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_label_routes_by_template_never_by_raw_names_or_ids() {
    let m = metered().await;
    let e = m.scrape().await;
    for sample in &e.samples {
        for (label, value) in &sample.labels {
            for raw in [
                m.alice.username.as_str(),
                m.bob.username.as_str(),
                "4111",
                "4222",
                "/nope",
            ] {
                assert!(
                    !value.contains(raw),
                    "raw {raw:?} in label {label}={value:?} of {}",
                    sample.name
                );
            }
            if label == "route" {
                assert!(
                    ROUTE_TEMPLATES.contains(&value.as_str()),
                    "route label {value:?} is not a template"
                );
            }
        }
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_requests_per_route_and_status_and_histograms_agree() {
    let m = metered().await;
    let e = m.scrape().await;
    assert_eq!(
        e.types
            .get("signal_server_http_requests_total")
            .map(String::as_str),
        Some("counter")
    );
    let requests = |route: &str, method: &str, status: &str| {
        e.value(
            "signal_server_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/messages/:regId", "POST", "201"), Some(4.0));
    assert_eq!(requests("/messages/:regId", "GET", "200"), Some(2.0));
    assert_eq!(
        requests("/prekeybundle/:username/:regId", "GET", "200"),
        Some(1.0)
    );
    assert_eq!(requests("/auth/users", "POST", "201"), Some(2.0));
    assert_eq!(requests("/auth/jwt/create", "POST", "200"), Some(2.0));
    assert_eq!(requests("/device/*", "POST", "201"), Some(2.0));
    assert_eq!(requests("other", "GET", "404"), Some(2.0));
    assert_eq!(requests("/messages/:regId/ws", "GET", "101"), Some(1.0));

    let counts = e.check_histograms("signal_server_http_request_duration_seconds");
    assert_eq!(
        counts,
        requests_by_route(&e),
        "histogram counts and request counters disagree"
    );
    for family in e.types.keys() {
        assert!(e.helps.contains_key(family), "{family} has no HELP");
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_gauges_follow_the_data_as_the_queue_drains_and_the_socket_closes() {
    let m = metered().await;
    let e = m.scrape().await;
    assert_eq!(e.gauge("signal_server_users"), 2.0);
    assert_eq!(e.gauge("signal_server_devices"), 2.0);
    assert_eq!(e.gauge("signal_server_queued_messages"), 4.0);
    assert_eq!(e.gauge("signal_server_prekeys"), (5 + 4 - 1) as f64);
    assert_eq!(e.gauge("signal_server_kyber_prekeys"), (3 + 2 - 1) as f64);
    assert_eq!(e.gauge("signal_server_websocket_connections"), 1.0);

    let path = format!("/messages/{}", m.bob.reg_id);
    let (_, queue) = m.s.get(&path, &m.bob.token).await;
    let (status, _) =
        m.s.delete(&path, &m.bob.token, json!(message_ids(&queue)))
            .await;
    assert_eq!(status, StatusCode::OK);
    let Metered {
        s,
        metrics_url,
        metrics,
        ws,
        ..
    } = m;
    drop(ws);
    let deadline = Instant::now() + BINARY_BOUND;
    loop {
        let e = scrape(&s.http, &metrics_url).await;
        assert_eq!(e.gauge("signal_server_queued_messages"), 1.0);
        if e.gauge("signal_server_websocket_connections") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    metrics.abort();
    stop_closed(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_its_metrics_address_and_serves_metrics_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Binary::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let api = server.base.clone();
    let metrics_url = format!("http://{}", server.wait_log("metrics on http://").await);
    assert!(
        metrics_url.ends_with("/metrics"),
        "the log line does not give the URL: {metrics_url}"
    );
    let metrics_port = metrics_url
        .trim_end_matches("/metrics")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("a port in the metrics URL");
    assert_ne!(metrics_port, 0, "the log shows port 0, not the real one");
    assert!(!api.ends_with(":0"), "the log shows port 0: {api}");

    let http = &server.http;
    for _ in 0..3 {
        let res = http
            .get(format!("{api}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("api");
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "/metrics on the public API"
    );

    let e = scrape(http, &metrics_url).await;
    assert_eq!(
        e.value(
            "signal_server_http_requests_total",
            &[("route", "/health"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0)
    );
    e.check_histograms("signal_server_http_request_duration_seconds");
    assert_eq!(e.gauge("signal_server_users"), 0.0);
    assert_eq!(e.gauge("signal_server_websocket_connections"), 0.0);
    // The API is not served on the metrics address.
    let metrics_base = metrics_url.trim_end_matches("/metrics");
    let res = http
        .get(format!("{metrics_base}/health"))
        .send()
        .await
        .expect("metrics address");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_head_health_and_an_access_line_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // Answers that went well are logged at debug (refusals at info, on by default).
    let mut cmd = binary_command(dir.path());
    serve_flags(&mut cmd, &["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info,signal_server::access=debug");
    let mut server = Binary::spawn(cmd).await;
    let (status, body) = server.try_call_text("GET", "/", None, None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let about: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(about["name"], "signal-server");
    assert_eq!(about["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        about["docs"].as_str().is_some_and(|d| d.contains("API.md")),
        "{about}"
    );
    assert_eq!(body.lines().count(), 1);

    let (status, body) = server
        .try_call_text("HEAD", "/health", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());

    let secret = "Secret-Password-Never-Logged-91";
    let frank = json!({"username": "frank", "password": secret});
    let (status, _) = server.call("POST", "/auth/users", None, Some(&frank)).await;
    assert_eq!(status, StatusCode::CREATED);
    let wrong = json!({"username": "frank", "password": "Wrong-Password-Never-Logged-92"});
    let (status, _) = server
        .call("POST", "/auth/jwt/create", None, Some(&wrong))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .call("GET", "/prekeybundle/frank/987654321", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.call("GET", "/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The version and the `/` route in /metrics, at the address the server logs.
    let url = format!("http://{}", server.wait_log("metrics on http://").await);
    let res = server.http.get(url).send().await.expect("scrape");
    let metrics = res.text().await.expect("metrics text");
    let version = env!("CARGO_PKG_VERSION");
    let build_info = format!("signal_server_build_info{{version=\"{version}\"}} 1");
    assert!(metrics.lines().any(|l| l == build_info), "{metrics}");
    let root = r#"signal_server_http_requests_total{route="/",method="GET",status="200"} 1"#;
    assert!(metrics.lines().any(|l| l == root), "{metrics}");

    let logs = server.stop().await;
    assert!(
        logs.contains(&format!(
            "signal-server {} starting",
            env!("CARGO_PKG_VERSION")
        )),
        "{logs}"
    );
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("signal_server::access"))
        .collect();
    for want in [
        "GET / 200",
        "HEAD /health 200",
        "POST /auth/users 201",
        "POST /auth/jwt/create 400",
        "GET /prekeybundle/:username/:regId 401",
        "GET other 404",
    ] {
        let line = access
            .iter()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no access line `{want}` in\n{logs}"));
        assert!(line.ends_with(" from 127.0.0.1"), "{line}");
    }
    for secret in [
        secret,
        "Wrong-Password-Never-Logged-92",
        "frank",
        "987654321",
    ] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}
