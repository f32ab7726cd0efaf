//! Prometheus metrics: requests by route, method and status, a latency histogram per route, and
//! gauges read at scrape time (queued messages, prekey stock, accounts, live connections). Served
//! on their own address (`--metrics-listen`), never on the public API.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::app::App;

const ROUTES: &[&str] = &[
    "/health",
    "/auth/users",
    "/auth/users/me",
    "/auth/jwt/create",
    "/auth/jwt/refresh",
    "/auth/jwt/verify",
    "/auth/password",
    "/auth/password/reset",
    "/auth/password/reset/confirm",
    "/device/*",
    "/prekeys/:regId",
    "/kyberprekeys/:regId",
    "/signedprekey/:regId",
    "/prekeybundle/:username/:regId",
    "/messages/:regId",
    "/messages/:regId/ws",
];

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(&'static str, &'static str, u16), u64>>,
    latency: Mutex<HashMap<&'static str, Histogram>>,
}

/// The route template a path belongs to, so that labels stay few (no ids, no usernames).
pub fn route_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    ROUTES
        .iter()
        .find(|template| {
            let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            if t.last() == Some(&"*") {
                return segments.first() == t.first();
            }
            t.len() == segments.len()
                && t.iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with(':') || t == s)
        })
        .copied()
        .unwrap_or("other")
}

/// A method as a static label (anything unusual counts as "other").
fn method_label(method: &str) -> &'static str {
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

impl Metrics {
    pub fn observe(&self, method: &str, path: &str, status: u16, elapsed: Duration) {
        let route = route_of(path);
        if let Ok(mut requests) = self.requests.lock() {
            *requests
                .entry((route, method_label(method), status))
                .or_default() += 1;
        }
        if let Ok(mut latency) = self.latency.lock() {
            let h = latency.entry(route).or_default();
            let secs = elapsed.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, app: &App) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP signal_server_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE signal_server_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            let mut rows: Vec<_> = requests.iter().collect();
            rows.sort();
            for ((route, method, status), n) in rows {
                let _ = writeln!(out, "signal_server_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str(
            "# HELP signal_server_http_request_duration_seconds Time to answer, by route.\n",
        );
        out.push_str("# TYPE signal_server_http_request_duration_seconds histogram\n");
        if let Ok(latency) = self.latency.lock() {
            let mut rows: Vec<_> = latency.iter().collect();
            rows.sort_by_key(|(route, _)| **route);
            for (route, h) in rows {
                for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                    let _ = writeln!(out, "signal_server_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}");
                }
                let _ = writeln!(out, "signal_server_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(
                    out,
                    "signal_server_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "signal_server_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        if let Ok(t) = app.storage.totals() {
            gauge(&mut out, "signal_server_users", "Accounts.", t.users);
            gauge(&mut out, "signal_server_devices", "Devices.", t.devices);
            gauge(
                &mut out,
                "signal_server_queued_messages",
                "Messages waiting for delivery.",
                t.queued_messages,
            );
            gauge(
                &mut out,
                "signal_server_prekeys",
                "One-time EC prekeys in stock.",
                t.prekeys,
            );
            gauge(
                &mut out,
                "signal_server_kyber_prekeys",
                "One-time Kyber prekeys in stock.",
                t.kyber_prekeys,
            );
        }
        gauge(
            &mut out,
            "signal_server_websocket_connections",
            "Open WebSocket connections.",
            app.hub.connections() as u64,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_route_templates_without_ids_or_names() {
        assert_eq!(route_of("/messages/123/"), "/messages/:regId");
        assert_eq!(route_of("/messages/123/ws"), "/messages/:regId/ws");
        assert_eq!(
            route_of("/prekeybundle/alice/7"),
            "/prekeybundle/:username/:regId"
        );
        assert_eq!(route_of("/device/"), "/device/*");
        assert_eq!(route_of("/device/5/x"), "/device/*");
        assert_eq!(route_of("/auth/users/me"), "/auth/users/me");
        assert_eq!(route_of("/nope"), "other");
    }
}
