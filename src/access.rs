//! The access log: one line per answered request at target `signal_server::access`: refusals
//! and faults at `info` (on by default), the rest at `debug`
//! (`RUST_LOG=info,signal_server::access=debug` logs every request,
//! `RUST_LOG=info,signal_server::access=off` none). It names the route template,
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

/// Refusals and faults (status 400 and up) are logged at `info`, so that they are on by default
/// (fail2ban reads failed logins); answers that went well at `debug`: a line per 2xx would cost
/// a busy server a fifth of its throughput (a locked, unbuffered write per request).
pub fn level(status: u16) -> log::Level {
    if status >= 400 {
        log::Level::Info
    } else {
        log::Level::Debug
    }
}

/// Logs one answered request; `client` is the peer, or the forwarded client behind a trusted
/// proxy (as the per-IP limits see it).
pub fn log(request: &Request<'_>, client: Option<IpAddr>) {
    let level = level(request.status);
    if !log::log_enabled!(target: TARGET, level) {
        return;
    }
    let client = client.map_or_else(|| "-".to_string(), |ip| ip.to_string());
    log::log!(
        target: TARGET,
        level,
        "{} {} {} {:.1}ms from {client}",
        request.method,
        crate::metrics::route_of(request.path),
        request.status,
        request.elapsed.as_secs_f64() * 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_log_at_info_and_the_rest_at_debug() {
        assert_eq!(level(200), log::Level::Debug);
        assert_eq!(level(101), log::Level::Debug);
        assert_eq!(level(400), log::Level::Info);
        assert_eq!(level(429), log::Level::Info);
        assert_eq!(level(503), log::Level::Info);
    }
}
