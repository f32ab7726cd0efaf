//! The access log: one line per answered request at target `signal_server::access` (on at
//! `info`; `RUST_LOG=info,signal_server::access=off` turns it off). It names the route template,
//! never the path (which holds usernames and registration ids), and nothing of headers or
//! bodies, so no token, password, key or message can reach it. Its fixed shape is what the
//! fail2ban filter of docs/SELF_HOSTING.md matches:
//! `POST /auth/jwt/create 400 12.3ms from 203.0.113.7`.

use std::net::IpAddr;

pub const TARGET: &str = "signal_server::access";

/// Logs one answered request; the client is the peer, or the forwarded client behind a trusted
/// proxy (as the per-IP limits see it).
pub fn log(info: &warp::log::Info<'_>, trusted: &[IpAddr]) {
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let forwarded = info
        .request_headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = crate::routes::client_of(trusted, info.remote_addr(), forwarded);
    let client = client.map_or_else(|| "-".to_string(), |ip| ip.to_string());
    log::info!(
        target: TARGET,
        "{} {} {} {:.1}ms from {client}",
        info.method(),
        crate::metrics::route_of(info.path()),
        info.status().as_u16(),
        info.elapsed().as_secs_f64() * 1000.0
    );
}
