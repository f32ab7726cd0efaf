//! Browsers (CORS): which web origins may call the API, preflight answers, the headers every
//! answer to an allowed origin carries (errors included), and the `Origin` check of WebSocket
//! upgrades.
//!
//! warp's own `cors()` is not used: it refuses a disallowed origin with a rejection of its own
//! and adds nothing to answers made by `recover`, so a browser could not read a 401 or a 429.
//! Here the preflight is one route and the headers are added to the final response, whatever
//! produced it. Tokens travel in `Authorization`, never in cookies, so no credentials mode is
//! needed and allowing an origin lets its scripts do only what they could do with a token anyway.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::error::ApiError;

/// Headers every preflight allows, whatever the browser asked for.
const ALWAYS_ALLOWED: &str = "authorization, content-type";
/// Response headers that scripts may read besides the safelisted ones.
const EXPOSED: &str = "retry-after, www-authenticate, location, upload-offset, upload-length, \
                       upload-expires, tus-resumable, tus-version, tus-extension, tus-max-size, \
                       content-range, etag";
/// How long a browser may cache a preflight, in seconds (one day; Chromium caps it at 2 h).
const MAX_AGE: &str = "86400";
/// At most this many requested header names are echoed in a preflight answer.
const MAX_REQUESTED: usize = 16;

/// The origins allowed to call the API from a browser (`--cors-origin`).
#[derive(Debug, Clone, PartialEq)]
pub enum Cors {
    /// `none`: no CORS headers; only same-origin pages can use the API.
    Off,
    /// `*` (the default): any origin, answered with `Access-Control-Allow-Origin: *`.
    Any,
    /// These origins exactly, lower case, default ports dropped; the request's origin is echoed.
    List(Vec<String>),
}

impl Cors {
    /// The policy of `--cors-origin`; refuses anything that is not an origin, and `*` or `none`
    /// mixed with other values.
    pub fn new(values: &[String]) -> Result<Cors, String> {
        let special = |v: &str| v == "*" || v.eq_ignore_ascii_case("none");
        match values {
            [] => Err("--cors-origin: no origin given (use *, none or an origin)".into()),
            [v] if v == "*" => Ok(Cors::Any),
            [v] if v.eq_ignore_ascii_case("none") => Ok(Cors::Off),
            _ if values.iter().any(|v| special(v.trim())) => {
                Err("--cors-origin: * and none stand alone, not among other origins".into())
            }
            _ => values
                .iter()
                .map(|v| parse_origin(v.trim()))
                .collect::<Result<_, _>>()
                .map(Cors::List),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or `None` when that
    /// origin gets no CORS headers.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match self {
            Cors::Off => None,
            Cors::Any => Some(HeaderValue::from_static("*")),
            Cors::List(list) => {
                let text = origin.to_str().ok()?;
                list.iter()
                    .any(|o| o.eq_ignore_ascii_case(text))
                    .then(|| origin.clone())
            }
        }
    }

    /// Adds the CORS headers to an answer (any answer: success, error, preflight, upgrade).
    pub fn decorate(&self, origin: Option<&HeaderValue>, mut res: Response) -> Response {
        if *self == Cors::Off {
            return res;
        }
        let headers = res.headers_mut();
        // The answer depends on `Origin` (present, allowed or not), so caches must key on it.
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        if let Some(allow) = self.allow_origin(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
        }
        res
    }

    /// The answer to a preflight on a known route: 204, with the route's methods when the
    /// origin is allowed (`decorate` adds the origin). `None`: not a preflight, or an unknown
    /// path, CORS off: the request goes on to the routes (405 or 404 there).
    fn preflight(&self, path: &str, headers: &HeaderMap) -> Option<Response> {
        if *self == Cors::Off || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let route = crate::route_table::find(path)?;
        let mut res = StatusCode::NO_CONTENT.into_response();
        if self.allow_origin(Some(origin)).is_none() {
            return Some(res);
        }
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok());
        let out = res.headers_mut();
        let methods = route.methods.join(", ");
        if let Ok(v) = HeaderValue::from_str(&methods) {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Ok(v) = HeaderValue::from_str(&allowed_headers(requested)) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        out.append(
            header::VARY,
            HeaderValue::from_static("access-control-request-headers"),
        );
        Some(res)
    }

    /// Whether a WebSocket upgrade may proceed: no `Origin` (not a browser), an allowed origin,
    /// or a page from the server's own host (same origin needs no CORS, even with `none`).
    fn websocket_allows(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.allow_origin(Some(origin)).is_some() {
            return true;
        }
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| authority);
        match (authority, host.and_then(|h| h.to_str().ok())) {
            (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
            _ => false,
        }
    }
}

/// `authorization, content-type`, then the requested names that are plain header names (at
/// most `MAX_REQUESTED`), lower case, each once.
fn allowed_headers(requested: Option<&str>) -> String {
    let mut out = ALWAYS_ALLOWED.to_string();
    let names = requested
        .unwrap_or_default()
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| is_token(n) && n.len() <= 64)
        .take(MAX_REQUESTED);
    for name in names {
        if !out.split(", ").any(|have| have == name) {
            out.push_str(", ");
            out.push_str(&name);
        }
    }
    out
}

/// An HTTP token (RFC 9110): the characters a header name may have.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks and normalises one configured origin: `scheme://host[:port]`, nothing after it.
fn parse_origin(value: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("--cors-origin {value:?} is not an origin ({why}); write scheme://host[:port] without a path, e.g. https://chat.example.org, or * or none")
    };
    let (scheme, authority) = value.split_once("://").ok_or_else(|| bad("no scheme://"))?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(bad("bad scheme"));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(bad("it has a path, a query or a trailing /"));
    }
    let (host, port) = split_port(authority).ok_or_else(|| bad("bad port"))?;
    let host_ok = if let Some(ip6) = host.strip_prefix('[') {
        ip6.strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    if !host_ok {
        return Err(bad("bad host"));
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    // Browsers leave a scheme's default port out of `Origin`.
    let default = matches!(
        (scheme.as_str(), port),
        ("http", Some(80)) | ("https", Some(443))
    );
    Ok(match port {
        Some(p) if !default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` into the host and the port; `None` for a port that is not 1..=65535.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let after_host = match authority.rfind(']') {
        Some(end) => end + 1,
        None => 0,
    };
    match authority[after_host..].rfind(':') {
        Some(i) => {
            let (host, port) = authority.split_at(after_host + i);
            let port: u16 = port[1..].parse().ok().filter(|p| *p != 0)?;
            Some((host, Some(port)))
        }
        None => Some((authority, None)),
    }
}

// ---------------------------------------------------------------------------------------------
// Filters, used by `routes::api`
// ---------------------------------------------------------------------------------------------

/// `OPTIONS` preflights on known routes, answered without authentication. Anything else is
/// "not found" here, the weakest rejection, so the other routes decide (405, 404).
pub fn preflight(
    cors: &Arc<Cors>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let cors = cors.clone();
    warp::method()
        .and_then(|method: Method| async move {
            if method == Method::OPTIONS {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(move |path: FullPath, headers: HeaderMap| {
            let answer = cors.preflight(path.as_str(), &headers);
            async move { answer.ok_or_else(warp::reject::not_found) }
        })
}

/// The request's `Origin` header, if any. An absent header costs no rejection (this runs on
/// every request); one that is not visible ASCII counts as absent (no browser sends such).
pub fn request_origin() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone
{
    warp::header::optional::<HeaderValue>("origin")
        .or(warp::any().map(|| None))
        .unify()
}

/// Adds the CORS headers to the final answer (see `Cors::decorate`).
pub fn decorate<R: Reply>(cors: &Arc<Cors>) -> impl Fn(R, Option<HeaderValue>) -> Response + Clone {
    let cors = cors.clone();
    move |reply, origin| cors.decorate(origin.as_ref(), reply.into_response())
}

/// Refuses a WebSocket upgrade from a browser page of an origin that is not allowed: 403
/// `origin_not_allowed`, before the upgrade and before authentication.
pub fn websocket_origin(cors: &Arc<Cors>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let cors = cors.clone();
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let allowed =
                cors.websocket_allows(headers.get(header::ORIGIN), headers.get(header::HOST));
            async move {
                if allowed {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::OriginNotAllowed))
                }
            }
        })
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(values: &[&str]) -> Result<Cors, String> {
        Cors::new(&values.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn origins_are_checked_and_normalised() {
        assert_eq!(cors(&["*"]), Ok(Cors::Any));
        assert_eq!(cors(&["NONE"]), Ok(Cors::Off));
        assert_eq!(
            cors(&[
                "HTTPS://Chat.Example.org:443",
                "http://127.0.0.1:5173",
                "http://[::1]:80"
            ]),
            Ok(Cors::List(vec![
                "https://chat.example.org".into(),
                "http://127.0.0.1:5173".into(),
                "http://[::1]".into(),
            ]))
        );
        for bad in [
            "chat.example.org",
            "https://chat.example.org/",
            "https://chat.example.org/app",
            "https://chat.example.org?x",
            "https://",
            "https://host:0",
            "https://host:99999",
            "https://host:",
            "https://us er@host",
            "1http://host",
            "http://[nope]",
            "",
        ] {
            let err = cors(&[bad]).expect_err(bad);
            assert!(err.contains("scheme://host[:port]"), "{err}");
        }
        assert!(cors(&["*", "https://a.example"]).is_err());
        assert!(cors(&["https://a.example", "none"]).is_err());
        assert!(cors(&[]).is_err());
    }

    #[test]
    fn requested_headers_are_echoed_only_when_plain_names() {
        assert_eq!(allowed_headers(None), "authorization, content-type");
        assert_eq!(
            allowed_headers(Some("Content-Type, X-Client-Version, bad header, ,a\u{7f}")),
            "authorization, content-type, x-client-version"
        );
    }

    #[test]
    fn server_faults_carry_the_headers_too() {
        let origin = HeaderValue::from_static("https://app.example");
        for error in [ApiError::Internal("cause".into()), ApiError::Unavailable] {
            let res = Cors::Any.decorate(Some(&origin), error.into_response());
            assert!(res.status().is_server_error());
            assert_eq!(res.headers()["access-control-allow-origin"], "*");
            assert_eq!(res.headers()["access-control-expose-headers"], EXPOSED);
            assert_eq!(res.headers()["vary"], "origin");
        }
    }

    #[test]
    fn websocket_origin_same_host_is_allowed_even_with_cors_off() {
        let off = Cors::Off;
        let v = HeaderValue::from_static;
        assert!(off.websocket_allows(None, None));
        assert!(off.websocket_allows(Some(&v("http://h:8000")), Some(&v("h:8000"))));
        assert!(!off.websocket_allows(Some(&v("http://evil:8000")), Some(&v("h:8000"))));
        let list = cors(&["https://app.example"]).unwrap();
        assert!(list.websocket_allows(Some(&v("https://app.example")), Some(&v("h"))));
        assert!(!list.websocket_allows(Some(&v("https://evil.example")), Some(&v("h"))));
    }
}
