//! Prometheus metrics: requests by route, method and status, a latency histogram per route, and
//! gauges read at scrape time (queued messages, prekey stock, accounts, live connections). Served
//! on their own address (`--metrics-listen`), never on the public API. The totals are the ones
//! storage keeps up to date (a scrape never scans the database); a database too damaged to count
//! leaves them out.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::route_table::{self, ROUTES};
use crate::storage::Totals;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
/// Statuses counted one by one; anything else is counted under its class (`2xx`, `4xx`, ...).
const STATUSES: [u16; 16] = [
    101, 200, 201, 204, 400, 401, 403, 404, 405, 411, 413, 415, 429, 500, 503, 0,
];
const ROUTE_SLOTS: usize = ROUTES.len() + 1;
const STATUS_SLOTS: usize = STATUSES.len() + 5;

/// Lock-free counters (a fixed table of atomics), so counting costs no lock on the request path.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    buckets: Vec<AtomicU64>,
    counts: Vec<AtomicU64>,
    sum_nanos: Vec<AtomicU64>,
    /// Database round trips made serving each route (see `round_trips`).
    round_trips: Vec<AtomicU64>,
    /// Connections closed at once for `--max-connections-per-ip` (counted by `net::per_ip`).
    pub refused_connections: Arc<AtomicU64>,
    /// Attachment totals as the sweep last counted them (`None` until it has).
    attachments: std::sync::Mutex<Option<crate::storage::attachments::AttachmentTotals>>,
    /// Attachments and blobs the sweeps removed.
    attachments_swept: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let atomics = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            requests: atomics(ROUTE_SLOTS * METHODS.len() * STATUS_SLOTS),
            buckets: atomics(ROUTE_SLOTS * BUCKETS.len()),
            counts: atomics(ROUTE_SLOTS),
            sum_nanos: atomics(ROUTE_SLOTS),
            round_trips: atomics(ROUTE_SLOTS),
            refused_connections: Arc::default(),
            attachments: std::sync::Mutex::default(),
            attachments_swept: AtomicU64::new(0),
        }
    }
}

/// The route template a path belongs to, so that labels stay few (no ids, no usernames).
pub fn route_of(path: &str) -> &'static str {
    ROUTES
        .get(route_table::index(path))
        .map_or("other", |r| r.template)
}

fn status_slot(status: u16) -> usize {
    match STATUSES[..STATUSES.len() - 1]
        .iter()
        .position(|s| *s == status)
    {
        Some(i) => i,
        None => STATUSES.len() + usize::from((status / 100).clamp(1, 5)) - 1,
    }
}

fn status_label(slot: usize) -> String {
    match STATUSES.get(slot) {
        Some(s) if *s != 0 => s.to_string(),
        _ => format!("{}xx", slot + 1 - STATUSES.len()),
    }
}

impl Metrics {
    /// Counts one answer, with the database round trips made for it.
    pub fn observe(
        &self,
        method: &str,
        path: &str,
        status: u16,
        elapsed: Duration,
        round_trips: u32,
    ) {
        let route = route_table::index(path);
        let method = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        let slot = (route * METHODS.len() + method) * STATUS_SLOTS + status_slot(status);
        self.requests[slot].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[route * BUCKETS.len() + b].fetch_add(1, Relaxed);
        }
        self.counts[route].fetch_add(1, Relaxed);
        self.sum_nanos[route].fetch_add(elapsed.as_nanos() as u64, Relaxed);
        if round_trips > 0 {
            self.round_trips[route].fetch_add(u64::from(round_trips), Relaxed);
        }
    }

    /// Counts what an attachment sweep removed.
    pub fn attachment_sweep(&self, removed: usize) {
        self.attachments_swept.fetch_add(removed as u64, Relaxed);
    }

    /// Keeps the attachment totals the sweep counted, for the next scrapes.
    pub fn attachment_totals(&self, totals: crate::storage::attachments::AttachmentTotals) {
        *self
            .attachments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(totals);
    }

    /// The Prometheus text exposition of everything, with the stored totals (none while they
    /// are being counted or unreadable) and the open WebSocket count.
    pub fn render(&self, totals: Option<&Totals>, websockets: usize) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP signal_server_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE signal_server_http_requests_total counter\n");
        let label = |i: usize| ROUTES.get(i).map_or("other", |r| r.template);
        for route in 0..ROUTE_SLOTS {
            for (m, method) in METHODS.iter().enumerate() {
                for status in 0..STATUS_SLOTS {
                    let n = self.requests[(route * METHODS.len() + m) * STATUS_SLOTS + status]
                        .load(Relaxed);
                    if n > 0 {
                        let (route, status) = (label(route), status_label(status));
                        let _ = writeln!(out, "signal_server_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}");
                    }
                }
            }
        }
        out.push_str(
            "# HELP signal_server_http_request_duration_seconds Time to answer, by route.\n",
        );
        out.push_str("# TYPE signal_server_http_request_duration_seconds histogram\n");
        for route in 0..ROUTE_SLOTS {
            let count = self.counts[route].load(Relaxed);
            if count == 0 {
                continue;
            }
            let name = label(route);
            let mut cumulative = 0;
            for (b, bound) in BUCKETS.iter().enumerate() {
                cumulative += self.buckets[route * BUCKETS.len() + b].load(Relaxed);
                let _ = writeln!(out, "signal_server_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"{bound}\"}} {cumulative}");
            }
            let sum = self.sum_nanos[route].load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "signal_server_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "signal_server_http_request_duration_seconds_sum{{route=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "signal_server_http_request_duration_seconds_count{{route=\"{name}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP signal_server_db_round_trips_total Database round trips made answering requests, by route (PostgreSQL).\n",
        );
        out.push_str("# TYPE signal_server_db_round_trips_total counter\n");
        for route in 0..ROUTE_SLOTS {
            let n = self.round_trips[route].load(Relaxed);
            if n > 0 {
                let name = label(route);
                let _ = writeln!(
                    out,
                    "signal_server_db_round_trips_total{{route=\"{name}\"}} {n}"
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        if let Some(t) = totals {
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
        let attachments = *self
            .attachments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(a) = attachments {
            gauge(
                &mut out,
                "signal_server_attachment_bytes",
                "Attachment bytes stored (as of the last sweep, once a minute).",
                a.bytes,
            );
            gauge(
                &mut out,
                "signal_server_attachments",
                "Complete attachments (as of the last sweep).",
                a.complete,
            );
            gauge(
                &mut out,
                "signal_server_attachment_uploads_in_progress",
                "Unfinished uploads (as of the last sweep).",
                a.unfinished,
            );
        }
        let _ = write!(
            out,
            "# HELP signal_server_attachments_swept_total Expired attachments and blobs without \
             a record that sweeps removed.\n\
             # TYPE signal_server_attachments_swept_total counter\n\
             signal_server_attachments_swept_total {}\n",
            self.attachments_swept.load(Relaxed)
        );
        gauge(
            &mut out,
            "signal_server_websocket_connections",
            "Open WebSocket connections.",
            websockets as u64,
        );
        let _ = write!(
            out,
            "# HELP signal_server_connections_refused_total Connections closed at once because \
             their client address had --max-connections-per-ip open.\n\
             # TYPE signal_server_connections_refused_total counter\n\
             signal_server_connections_refused_total {}\n",
            self.refused_connections.load(Relaxed)
        );
        let _ = write!(
            out,
            "# HELP signal_server_build_info The running version.\n\
             # TYPE signal_server_build_info gauge\n\
             signal_server_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
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
        assert_eq!(route_of("/"), "/");
        assert_eq!(route_of("/messages"), "other");
        assert_eq!(route_of("/messages/1/ws/x"), "other");
    }

    #[test]
    fn unusual_statuses_are_counted_by_class() {
        assert_eq!(status_label(status_slot(201)), "201");
        assert_eq!(status_label(status_slot(418)), "4xx");
        assert_eq!(status_label(status_slot(302)), "3xx");
        assert_eq!(status_label(status_slot(502)), "5xx");
    }
}
