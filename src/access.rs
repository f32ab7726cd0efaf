//! The access log: one line per answered request at target `signal_server::access` (on at
//! `info`; `RUST_LOG=info,signal_server::access=off` turns it off). It names the route template,
//! never the path (which holds usernames and registration ids), and nothing of headers or
//! bodies, so no token, password, key or message can reach it. Its fixed shape is what the
//! fail2ban filter of docs/SELF_HOSTING.md matches:
//! `POST /auth/jwt/create 400 12.3ms from 203.0.113.7`.

use std::net::IpAddr;
use std::time::Duration;

pub const TARGET: &str = "signal_server::access";

/// What the access log and the metrics see of one answered request.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub elapsed: Duration,
}

/// Logs one answered request; `client` is the peer, or the forwarded client behind a trusted
/// proxy (as the per-IP limits see it).
pub fn log(request: &Request<'_>, client: Option<IpAddr>) {
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let client = client.map_or_else(|| "-".to_string(), |ip| ip.to_string());
    log::info!(
        target: TARGET,
        "{} {} {} {:.1}ms from {client}",
        request.method,
        crate::metrics::route_of(request.path),
        request.status,
        request.elapsed.as_secs_f64() * 1000.0
    );
}
